package punch

import (
	"errors"
	"fmt"
	"path/filepath"
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
		return fmt.Errorf("%w for %s: pinned %s, now offered %s. Someone may be impersonating the server, or its key was replaced. If the change is expected, stop the daemon, delete the pin for %s from %s and start it",
			ErrServerKeyChanged, server, old, key, server, filepath.Join(d.cfg.StateDir, "state.json"))
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
