package store

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// What the running rendezvous leaves in the store for the hook and for
// gcn-heartbeat: its control socket, its UDP address and its access mode.

// SocketPath is the unix socket where the rendezvous takes pokes from the hook.
func (s *Store) SocketPath() string { return filepath.Join(s.Dir, "rendezvous.sock") }

func (s *Store) addrPath() string  { return filepath.Join(s.Dir, "rendezvous.addr") }
func (s *Store) modePath() string  { return filepath.Join(s.Dir, "rendezvous.mode") }
func (s *Store) addr2Path() string { return filepath.Join(s.Dir, "rendezvous.addr2") }

// Access modes, as written to rendezvous.mode.
const (
	ModeOpen       = "open"       // any key may follow any repository
	ModeRegistered = "registered" // only keys registered over SSH
)

// SetRendezvous records, at the rendezvous's start, its access mode
// (rendezvous.mode) and its UDP address (rendezvous.addr), one line each,
// and, for a rendezvous bound to a specific address in each family, its
// address in the other (rendezvous.addr2; removed when there is none).
// The address comes last: its appearance says that the rendezvous is up
// and everything it writes at start is written.
func (s *Store) SetRendezvous(addr netip.AddrPort, open bool, second ...netip.AddrPort) error {
	mode := ModeRegistered
	if open {
		mode = ModeOpen
	}
	if err := atomicfile.WriteFile(s.modePath(), []byte(mode+"\n"), 0o644); err != nil {
		return err
	}
	if len(second) > 0 && second[0].IsValid() {
		if err := atomicfile.WriteFile(s.addr2Path(), []byte(second[0].String()+"\n"), 0o644); err != nil {
			return err
		}
	} else if err := os.Remove(s.addr2Path()); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return atomicfile.WriteFile(s.addrPath(), []byte(addr.String()+"\n"), 0o644)
}

// RendezvousAddrs is the rendezvous's UDP address and, when it listens on
// a specific address in each family, its address in the other.
func (s *Store) RendezvousAddrs() ([]netip.AddrPort, error) {
	a, err := s.RendezvousAddr()
	if err != nil {
		return nil, err
	}
	out := []netip.AddrPort{a}
	if b, err := readSmall(s.addr2Path(), maxSmallFile); err == nil {
		if ap, err := netip.ParseAddrPort(strings.TrimSpace(string(b))); err == nil && ap.Addr().Is6() != a.Addr().Is6() {
			out = append(out, ap)
		}
	}
	return out, nil
}

// ErrNeverStarted says that no rendezvous has run on this store yet.
var ErrNeverStarted = errors.New("the rendezvous has never started on this store")

// RendezvousAddr is the UDP address the rendezvous last started on.
func (s *Store) RendezvousAddr() (netip.AddrPort, error) {
	b, err := readSmall(s.addrPath(), maxSmallFile)
	if errors.Is(err, fs.ErrNotExist) {
		return netip.AddrPort{}, fmt.Errorf("%w (no %s)", ErrNeverStarted, s.addrPath())
	}
	if err != nil {
		return netip.AddrPort{}, err
	}
	ap, err := netip.ParseAddrPort(strings.TrimSpace(string(b)))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%s: %v", s.addrPath(), err)
	}
	return ap, nil
}

// Mode is the access mode the rendezvous last started with; registered
// when unknown, the safe default.
func (s *Store) Mode() string {
	b, _ := readSmall(s.modePath(), maxSmallFile)
	if strings.TrimSpace(string(b)) == ModeOpen {
		return ModeOpen
	}
	return ModeRegistered
}

// ExistingServerKeys loads the server key pair without ever creating one.
func (s *Store) ExistingServerKeys() (pub, priv wire.Key, err error) {
	b, err := readSmall(filepath.Join(s.Dir, "server.key"), maxSmallFile)
	if errors.Is(err, fs.ErrNotExist) {
		return pub, priv, fmt.Errorf("no server key yet: start the rendezvous once")
	}
	if err != nil {
		return pub, priv, err
	}
	if priv, err = wire.ParseKey(string(b)); err != nil {
		return pub, priv, fmt.Errorf("%s: %w", filepath.Join(s.Dir, "server.key"), err)
	}
	return wire.PublicKey(priv), priv, nil
}

// ServerPublicKey reads server.pub, never creating a key.
func (s *Store) ServerPublicKey() (wire.Key, error) {
	b, err := readSmall(filepath.Join(s.Dir, "server.pub"), maxSmallFile)
	if err != nil {
		return wire.Key{}, fmt.Errorf("no server key yet: start the rendezvous once")
	}
	return wire.ParseKey(string(b))
}

// maxSmallFile bounds reads of the store's one-line files: none holds more
// than a path or a key and a newline, so a larger file is damage, not data.
const maxSmallFile = 8 << 10

// readSmall reads a file of at most limit bytes, refusing a larger one
// without reading it all.
func readSmall(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// ClusterPath holds, while a rendezvous runs with --cluster, how to reach
// the cluster (JSON: urls, and creds or user and password), so that the
// hook publishes each push to it before returning. 0600: it may hold a
// password.
func (s *Store) ClusterPath() string { return filepath.Join(s.Dir, "cluster.json") }

// SetCluster writes the cluster file, or removes it (nil).
func (s *Store) SetCluster(b []byte) error {
	if b == nil {
		if err := os.Remove(s.ClusterPath()); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return atomicfile.WriteFile(s.ClusterPath(), b, 0o600)
}

// Cluster reads the cluster file; nil when there is none.
func (s *Store) Cluster() ([]byte, error) {
	b, err := readSmall(s.ClusterPath(), maxSmallFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}
