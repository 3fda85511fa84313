// Package store keeps the rendezvous's on-disk state: server keys, client records, authorisations and event logs.
package store

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// DefaultDir is the seed's store location.
const DefaultDir = "/var/git-chat-notif-db"

// Errors.
var (
	ErrBadRecord = errors.New("store: malformed record")
	ErrNoClient  = errors.New("store: no such client")
)

// Store is the one type through which everything on disk is reached.
type Store struct {
	Dir string
	// Retain is how many events a log keeps after compaction; it compacts
	// when it holds twice as many. Zero means DefaultRetain.
	Retain int
}

// Open makes sure the store's directories exist and returns it.
func Open(dir string) (*Store, error) {
	for _, d := range []string{dir, filepath.Join(dir, "clients"), filepath.Join(dir, "repos"), filepath.Join(dir, "auth")} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	return &Store{Dir: dir}, nil
}

// ErrNoStore is OpenExisting's error for a directory that holds no store.
var ErrNoStore = errors.New("no gcn-punch store")

// OpenExisting opens a store that exists, creating nothing: what read-only
// commands use, so that a mistyped --store is an error, not a new empty
// store.
func OpenExisting(dir string) (*Store, error) {
	if fi, err := os.Stat(filepath.Join(dir, "clients")); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("%w in %s (it has no clients/ directory): give the store directory the rendezvous runs with", ErrNoStore, dir)
	}
	return &Store{Dir: dir}, nil
}

// ServerKeys loads the server key pair, creating it on first use:
// server.key (mode 0600) and server.pub each hold 64 hex characters and a newline.
func (s *Store) ServerKeys() (pub, priv wire.Key, err error) {
	keyPath := filepath.Join(s.Dir, "server.key")
	b, err := os.ReadFile(keyPath)
	switch {
	case err == nil:
		priv, err = wire.ParseKey(string(b))
		if err != nil {
			return pub, priv, fmt.Errorf("store: %s: %w", keyPath, err)
		}
		pub = wire.PublicKey(priv)
	case errors.Is(err, fs.ErrNotExist):
		pub, priv, err = wire.GenerateKey()
		if err != nil {
			return pub, priv, err
		}
		if err := atomicfile.WriteFile(keyPath, []byte(priv.String()+"\n"), 0o600); err != nil {
			return pub, priv, err
		}
	default:
		return pub, priv, fmt.Errorf("store: %w", err)
	}
	pubPath := filepath.Join(s.Dir, "server.pub")
	if old, err := os.ReadFile(pubPath); err != nil || strings.TrimSpace(string(old)) != pub.String() {
		if err := atomicfile.WriteFile(pubPath, []byte(pub.String()+"\n"), 0o644); err != nil {
			return pub, priv, err
		}
	}
	return pub, priv, nil
}

// SigningKey loads the server's Ed25519 signing key, creating it on first
// use: server.sign (mode 0600) holds its 32-byte seed as 64 hex characters
// and a newline. The rendezvous signs each event with it once, for
// peer-to-peer fan-out; daemons learn the public half over the sealed path.
func (s *Store) SigningKey() (ed25519.PrivateKey, error) {
	path := filepath.Join(s.Dir, "server.sign")
	b, err := readSmall(path, maxSmallFile)
	switch {
	case err == nil:
		seed, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("store: %s: want %d hex characters", path, 2*ed25519.SeedSize)
		}
		return ed25519.NewKeyFromSeed(seed), nil
	case errors.Is(err, fs.ErrNotExist):
		_, priv, err := ed25519.GenerateKey(nil)
		if err != nil {
			return nil, err
		}
		if err := atomicfile.WriteFile(path, []byte(hex.EncodeToString(priv.Seed())+"\n"), 0o600); err != nil {
			return nil, err
		}
		return priv, nil
	default:
		return nil, fmt.Errorf("store: %w", err)
	}
}

// ClientRecord is the seed's per-client record: last heartbeat and address.
type ClientRecord struct {
	ID        wire.Key
	Heartbeat time.Time // second precision on disk
	Addr      netip.AddrPort
}

func (s *Store) clientPath(id wire.Key) string {
	h := id.String()
	return filepath.Join(s.Dir, "clients", h[:2], h[2:])
}

// EncodeRecord renders the seed's format: "<epoch>\0<IP>\0<PORT>", no newline.
func EncodeRecord(heartbeat time.Time, addr netip.AddrPort) []byte {
	return fmt.Appendf(nil, "%d\x00%s\x00%d", heartbeat.Unix(), addr.Addr().Unmap(), addr.Port())
}

// DecodeRecord parses a client record strictly.
func DecodeRecord(b []byte) (heartbeat time.Time, addr netip.AddrPort, err error) {
	parts := bytes.Split(b, []byte{0})
	if len(parts) != 3 {
		return heartbeat, addr, fmt.Errorf("%w: want 3 NUL-separated fields, got %d", ErrBadRecord, len(parts))
	}
	epoch, err := strconv.ParseInt(string(parts[0]), 10, 64)
	if err != nil || epoch < 0 {
		return heartbeat, addr, fmt.Errorf("%w: epoch %q", ErrBadRecord, parts[0])
	}
	ip, err := netip.ParseAddr(string(parts[1]))
	if err != nil {
		return heartbeat, addr, fmt.Errorf("%w: ip %q", ErrBadRecord, parts[1])
	}
	port, err := strconv.ParseUint(string(parts[2]), 10, 16)
	if err != nil || port == 0 {
		return heartbeat, addr, fmt.Errorf("%w: port %q", ErrBadRecord, parts[2])
	}
	return time.Unix(epoch, 0), netip.AddrPortFrom(ip, uint16(port)), nil
}

// WriteClient writes a client's record atomically (temporary file, then
// rename). It does not fsync: a record is refreshed by the client's
// keepalives, so a power loss can only cost the latest refresh, and at
// 100k clients fsyncs would dominate the rendezvous's work.
func (s *Store) WriteClient(r ClientRecord) error {
	p := s.clientPath(r.ID)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return err
	}
	return atomicfile.Replace(p, EncodeRecord(r.Heartbeat, r.Addr), 0o640)
}

// ReadClient reads one client's record.
func (s *Store) ReadClient(id wire.Key) (ClientRecord, error) {
	b, err := readSmall(s.clientPath(id), maxSmallFile)
	if errors.Is(err, fs.ErrNotExist) {
		return ClientRecord{}, ErrNoClient
	}
	if err != nil {
		return ClientRecord{}, err
	}
	hb, addr, err := DecodeRecord(b)
	return ClientRecord{ID: id, Heartbeat: hb, Addr: addr}, err
}

// EachClient calls fn for every well-formed client record until fn returns
// false. Malformed records are skipped.
func (s *Store) EachClient(fn func(ClientRecord) bool) error {
	return s.walkClients(func(_ string, r ClientRecord, err error) bool {
		return err != nil || fn(r)
	})
}

// Clients lists every well-formed client record. Malformed ones are
// returned by name in bad so the caller can log them.
func (s *Store) Clients() (recs []ClientRecord, bad []string, err error) {
	err = s.walkClients(func(name string, r ClientRecord, err error) bool {
		if err != nil {
			bad = append(bad, name)
		} else {
			recs = append(recs, r)
		}
		return true
	})
	return recs, bad, err
}

// walkClients calls fn with each record under clients/, by its 64-hex
// name, or with the error that makes it malformed, until fn returns false.
func (s *Store) walkClients(fn func(name string, r ClientRecord, err error) bool) error {
	root := filepath.Join(s.Dir, "clients")
	prefixes, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, p := range prefixes {
		if !p.IsDir() || len(p.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, p.Name()))
		if err != nil {
			return err
		}
		for _, f := range files {
			if strings.HasPrefix(f.Name(), ".tmp") {
				continue // an interrupted atomic write
			}
			name := p.Name() + f.Name()
			var r ClientRecord
			id, err := wire.ParseKey(name)
			if err == nil {
				r, err = s.ReadClient(id)
			}
			if !fn(name, r, err) {
				return nil
			}
		}
	}
	return nil
}

// RecentRecord is how old a client record may be and still name a live NAT
// mapping: the rendezvous rewrites a live client's record every 10 minutes
// and lets a client lapse 5 minutes after its last packet, so a record
// older than both together is behind a mapping long gone.
const RecentRecord = 15 * time.Minute

// RecordExpiry is how long a silent client's record stays on disk: nothing
// sends to a record older than RecentRecord, and `status --store` lists the
// clients seen within the last day. Without it, every key that ever spoke
// (in open mode, anyone's) would leave a file behind for good.
const RecordExpiry = 24 * time.Hour

// RemoveStaleClients removes the well-formed records whose heartbeat is
// older than before, and returns how many it removed. Malformed records are
// left for the operator (the rendezvous logs them at start).
func (s *Store) RemoveStaleClients(before time.Time) (int, error) {
	removed := 0
	var firstErr error
	err := s.walkClients(func(_ string, r ClientRecord, err error) bool {
		if err == nil && r.Heartbeat.Before(before) {
			if err := os.Remove(s.clientPath(r.ID)); err == nil {
				removed++
			} else if firstErr == nil && !errors.Is(err, fs.ErrNotExist) {
				firstErr = err
			}
		}
		return true
	})
	if err == nil {
		err = firstErr
	}
	return removed, err
}

// Recent reports whether a record is recent enough to send to (RecentRecord).
func (r ClientRecord) Recent(now time.Time) bool { return now.Sub(r.Heartbeat) <= RecentRecord }

// repoDirName maps a repository id to one flat directory name: '/' is not
// allowed in a name and '%' is not allowed in an id, so "team/chat.git"
// becomes "team%chat.git" and no two ids collide.
func repoDirName(repoID string) string { return strings.ReplaceAll(repoID, "/", "%") }

func repoIDFromDir(name string) string { return strings.ReplaceAll(name, "%", "/") }

// Authorise records that a client may follow a repository until expiry:
// auth/<repo>/<64 hex id> holds the expiry as a decimal Unix epoch and a newline.
func (s *Store) Authorise(repoID string, id wire.Key, expiry time.Time) error {
	if err := wire.ValidRepoID(repoID); err != nil {
		return err
	}
	dir := filepath.Join(s.Dir, "auth", repoDirName(repoID))
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, id.String()), fmt.Appendf(nil, "%d\n", expiry.Unix()), 0o640)
}

// Authorised reports whether a client may follow a repository at time now.
func (s *Store) Authorised(repoID string, id wire.Key, now time.Time) bool {
	exp, ok := s.AuthExpiry(repoID, id)
	return ok && now.Before(exp)
}

// AuthExpiry returns when a client's registration for a repository ends;
// false when it has none (or its file does not parse).
func (s *Store) AuthExpiry(repoID string, id wire.Key) (time.Time, bool) {
	if wire.ValidRepoID(repoID) != nil {
		return time.Time{}, false
	}
	b, err := readSmall(filepath.Join(s.Dir, "auth", repoDirName(repoID), id.String()), maxSmallFile)
	if err != nil {
		return time.Time{}, false
	}
	exp, err := strconv.ParseInt(strings.TrimSuffix(string(b), "\n"), 10, 64)
	if err != nil {
		return time.Time{}, false
	}
	return time.Unix(exp, 0), true
}

// EachAuth calls fn with every authorisation that parses, repository by
// repository.
func (s *Store) EachAuth(fn func(repoID string, id wire.Key, expiry time.Time)) error {
	repos, err := os.ReadDir(filepath.Join(s.Dir, "auth"))
	if err != nil {
		return err
	}
	for _, rd := range repos {
		repoID := repoIDFromDir(rd.Name())
		if !rd.IsDir() || wire.ValidRepoID(repoID) != nil {
			continue
		}
		keys, _ := os.ReadDir(filepath.Join(s.Dir, "auth", rd.Name()))
		for _, kd := range keys {
			id, err := wire.ParseKey(kd.Name())
			if err != nil || len(kd.Name()) != 2*wire.KeyLen {
				continue
			}
			if exp, ok := s.AuthExpiry(repoID, id); ok {
				fn(repoID, id, exp)
			}
		}
	}
	return nil
}

// hexOK reports whether s is lowercase hex of a git object id.
func hexOK(s string) bool {
	if len(s) != 40 && len(s) != 64 {
		return false
	}
	_, err := hex.DecodeString(s)
	return err == nil && strings.ToLower(s) == s
}
