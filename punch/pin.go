package punch

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// ErrServerKeyChanged is returned when a server offers a key other than the
// one pinned at first registration.
var ErrServerKeyChanged = errors.New("punch: SERVER KEY CHANGED")

// Pin checks key against the key pinned for server, pinning it on first
// use. A different key is refused, loudly, as ssh refuses a changed host key.
func (d *Daemon) Pin(server string, key wire.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state.Pins == nil {
		d.state.Pins = map[string]string{}
	}
	old, ok := d.state.Pins[server]
	if ok && old != key.String() {
		return fmt.Errorf("%w for %s: pinned %s, now offered %s. Someone may be impersonating the server, or its key was replaced. If the change is expected, stop the daemon, run `gcn-punch unpin %s --state %s` and start it",
			ErrServerKeyChanged, server, old, key, server, d.cfg.StateDir)
	}
	if ok {
		return nil
	}
	d.state.Pins[server] = key.String()
	return d.state.save(d.cfg.StateDir)
}

// heartbeatProof proves to the server pinned under name that this daemon
// holds its key (wire.HeartbeatProof), or returns "" when no key is pinned
// for it yet.
func (d *Daemon) heartbeatProof(server, repoPath, port string) string {
	d.mu.Lock()
	pinned := d.state.Pins[server]
	d.mu.Unlock()
	key, err := wire.ParseKey(pinned)
	if pinned == "" || err != nil {
		return ""
	}
	shared := wire.SharedKey(key, d.priv)
	p, err := wire.HeartbeatProof(&shared, repoPath, port, time.Now())
	if err != nil {
		return ""
	}
	return p
}

// rememberServer records the server's address in the state for `probe`.
func (d *Daemon) rememberServer(s Server) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state.Rendezvous == nil {
		d.state.Rendezvous = map[string]string{}
	}
	if d.state.Rendezvous[s.Key.String()] == s.Addr.String() {
		return
	}
	d.state.Rendezvous[s.Key.String()] = s.Addr.String()
	d.saveLocked()
}

// Unpin forgets the server key pinned for server, so that the next
// registration pins the key the server offers then: what to do after an
// expected key change. server is the pin's name as the error names it
// ("git@chat.example:22"), or just its host ("chat.example"), which
// forgets every pin for that host. The daemon must be stopped (the state
// directory's lock says whether it runs). It returns the pins removed.
func Unpin(stateDir, server string) (removed map[string]string, err error) {
	release, err := LockState(stateDir)
	if err != nil {
		return nil, err
	}
	defer release()
	st, err := loadState(stateDir)
	if err != nil {
		return nil, err
	}
	removed = map[string]string{}
	for name, key := range st.Pins {
		if name == server || pinHost(name) == server {
			removed[name] = key
			delete(st.Pins, name)
		}
	}
	if len(removed) == 0 {
		if len(st.Pins) == 0 {
			return nil, fmt.Errorf("no key is pinned for %q in %s: nothing is pinned there (a daemon pins a server's key when it first registers over SSH)", server, stateDir)
		}
		names := slices.Sorted(maps.Keys(st.Pins))
		return nil, fmt.Errorf("no key is pinned for %q in %s: the pins there are %s (give one, or its host)", server, stateDir, strings.Join(names, ", "))
	}
	return removed, st.compact(stateDir)
}

// pinHost is the host of a pin's name, "user@host:port" or "user@[v6]:port".
func pinHost(name string) string {
	if _, h, ok := strings.Cut(name, "@"); ok {
		name = h
	}
	if host, _, err := net.SplitHostPort(name); err == nil {
		return host
	}
	return name
}
