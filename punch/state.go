package punch

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/gitchat/gcn-punch/internal/atomicfile"
	"github.com/gitchat/gcn-punch/wire"
)

// Event is one notification as the daemon's actions see it.
type Event struct {
	ServerKey string `json:"server_key"`
	Repo      string `json:"repo"`
	Ref       string `json:"ref,omitempty"`
	Old       string `json:"old,omitempty"`
	New       string `json:"new,omitempty"`
	Seq       uint64 `json:"seq"`
	TimeMilli int64  `json:"time_ms"`
	// Resync is true when events were lost to the server's retention: the
	// right action is a full pull.
	Resync bool `json:"resync,omitempty"`
	// The push's chat message, when the notification carried one (a
	// rendezvous that writes messages, a daemon it knows reads them).
	Author  string `json:"author,omitempty"`
	Subject string `json:"subject,omitempty"`
	Count   int    `json:"count,omitempty"` // commits the push added
}

// RepoState is the daemon's position in one repository's log.
type RepoState struct {
	Known   bool   `json:"known"`
	LastSeq uint64 `json:"last_seq"`
}

// State is what the daemon keeps in STATE/state.json and STATE/state.journal.
// Every change is made durable before it is acknowledged (see save).
type State struct {
	Version int `json:"version"`
	// Gen counts the saves; the newest whole state wins on loading.
	Gen uint64 `json:"gen"`
	// Servers maps a server's public key (hex) to its repositories' positions.
	Servers map[string]map[string]*RepoState `json:"servers"`
	// Pending holds handled events whose actions have not finished; they run
	// again after a crash.
	Pending []Event `json:"pending"`
	// Pins maps an SSH server ("user@host:port") to the rendezvous key it
	// gave at first registration, as ssh's known_hosts does for host keys.
	Pins map[string]string `json:"pins,omitempty"`
	// Rendezvous maps a server key to the UDP address last used for it
	// (`gcn-punch probe` starts from it).
	Rendezvous map[string]string `json:"rendezvous,omitempty"`
	// Nodes maps a server key to its cluster's node addresses, as the
	// last Nodes message listed them (nodes.go): a daemon restarted while
	// its node is down moves to another.
	Nodes map[string][]string `json:"nodes,omitempty"`
}

// LastRendezvous returns an address the daemon in stateDir last used.
func LastRendezvous(stateDir string) (netip.AddrPort, error) {
	st, err := loadState(stateDir)
	if err != nil {
		return netip.AddrPort{}, err
	}
	for _, a := range st.Rendezvous {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			return ap, nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no rendezvous recorded in %s", filepath.Join(stateDir, "state.json"))
}

const stateVersion = 1

// The state's files. Each save appends the whole state, one JSON line, to
// the journal and syncs it once (fdatasync): rewriting state.json through a
// temporary file costs a file sync, a rename and a directory sync, about
// 0.4 ms here against 0.14 ms, and it is on the path from a notification's
// arrival to the user's program. The journal is folded into state.json
// (atomically) when it passes journalCompactAt, when the daemon starts, and
// when it stops; so with the daemon stopped, state.json is the whole state.
const (
	stateName        = "state.json"
	journalName      = "state.journal"
	journalCompactAt = 64 << 10 // a few hundred saves of a typical state
)

// HasPosition reports whether the daemon whose state is in dir knows its
// position in some repository: it has been answered by a rendezvous.
func HasPosition(dir string) bool {
	st, err := loadState(dir)
	if err != nil {
		return false
	}
	for _, repos := range st.Servers {
		for _, r := range repos {
			if r.Known {
				return true
			}
		}
	}
	return false
}

// loadState returns the state kept in dir: state.json, or a newer state from
// the journal. It changes nothing on disk.
func loadState(dir string) (*State, error) {
	best := &State{Version: stateVersion, Servers: map[string]map[string]*RepoState{}}
	b, err := os.ReadFile(filepath.Join(dir, stateName))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, err
	default:
		var s State
		if err := json.Unmarshal(b, &s); err != nil {
			return nil, fmt.Errorf("punch: %s: %w", filepath.Join(dir, stateName), err)
		}
		if s.Version != stateVersion {
			return nil, fmt.Errorf("punch: state.json version %d, this daemon reads %d", s.Version, stateVersion)
		}
		best = &s
	}
	j, err := os.ReadFile(filepath.Join(dir, journalName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	// Whole lines only: a line cut short by a crash does not parse and is
	// skipped (it was never acknowledged: the sync had not returned).
	for _, line := range bytes.Split(j, []byte{'\n'}) {
		var s State
		if len(line) == 0 || json.Unmarshal(line, &s) != nil || s.Version != stateVersion {
			continue
		}
		if s.Gen > best.Gen {
			best = &s
		}
	}
	if best.Servers == nil {
		best.Servers = map[string]map[string]*RepoState{}
	}
	return best, nil
}

// save makes s durable with one sync: a line appended to the journal.
func (s *State) save(dir string) error {
	s.Gen++
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	path := filepath.Join(dir, journalName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// A new journal: its directory entry must be durable too, once.
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			err = atomicfile.SyncDir(dir)
		}
	}
	if err != nil {
		if f != nil {
			f.Close()
		}
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = syncData(f)
	}
	var size int64
	if fi, serr := f.Stat(); serr == nil {
		size = fi.Size()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if size > journalCompactAt {
		return s.compact(dir)
	}
	return nil
}

// compact writes s whole to state.json (atomically, durably) and empties the
// journal. A crash between the two leaves journal lines no newer than
// state.json, which loading ignores.
func (s *State) compact(dir string) error {
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, stateName), b, 0o600); err != nil {
		return err
	}
	err = os.Truncate(filepath.Join(dir, journalName), 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

func (s *State) repo(server wire.Key, repo string) *RepoState {
	m := s.Servers[server.String()]
	if m == nil {
		m = map[string]*RepoState{}
		s.Servers[server.String()] = m
	}
	r := m[repo]
	if r == nil {
		r = &RepoState{}
		m[repo] = r
	}
	return r
}

// LoadOrCreateKey returns the client's key pair from dir/client.key (mode
// 0600, 64 hex characters), creating it on first use; the public half is
// also written to dir/client.pub. The public key is the client's identity.
func LoadOrCreateKey(dir string) (pub, priv wire.Key, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return pub, priv, err
	}
	p := filepath.Join(dir, "client.key")
	b, err := os.ReadFile(p)
	switch {
	case err == nil:
		if priv, err = wire.ParseKey(string(b)); err != nil {
			return pub, priv, fmt.Errorf("punch: %s: %w", p, err)
		}
		pub = wire.PublicKey(priv)
	case errors.Is(err, fs.ErrNotExist):
		if pub, priv, err = wire.GenerateKey(); err != nil {
			return pub, priv, err
		}
		if err := atomicfile.WriteFile(p, []byte(priv.String()+"\n"), 0o600); err != nil {
			return pub, priv, err
		}
	default:
		return pub, priv, err
	}
	err = atomicfile.WriteFile(filepath.Join(dir, "client.pub"), []byte(pub.String()+"\n"), 0o600)
	return pub, priv, err
}
