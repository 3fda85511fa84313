package punch

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/gitchat/gcn-punch/rendezvous/store"
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
}

// RepoState is the daemon's position in one repository's log.
type RepoState struct {
	Known   bool   `json:"known"`
	LastSeq uint64 `json:"last_seq"`
}

// State is what the daemon keeps in STATE/state.json. It is rewritten
// atomically after every change, before the change is acknowledged.
type State struct {
	Version int `json:"version"`
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

func loadState(dir string) (*State, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return &State{Version: stateVersion, Servers: map[string]map[string]*RepoState{}}, nil
	}
	if err != nil {
		return nil, err
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("punch: %s: %w", filepath.Join(dir, "state.json"), err)
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("punch: state.json version %d, this daemon reads %d", s.Version, stateVersion)
	}
	if s.Servers == nil {
		s.Servers = map[string]map[string]*RepoState{}
	}
	return &s, nil
}

func (s *State) save(dir string) error {
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		return err
	}
	return store.WriteFileAtomic(filepath.Join(dir, "state.json"), b, 0o600)
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
		if err := store.WriteFileAtomic(p, []byte(priv.String()+"\n"), 0o600); err != nil {
			return pub, priv, err
		}
	default:
		return pub, priv, err
	}
	err = store.WriteFileAtomic(filepath.Join(dir, "client.pub"), []byte(pub.String()+"\n"), 0o600)
	return pub, priv, err
}
