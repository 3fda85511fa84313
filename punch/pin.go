package punch

import (
	"errors"
	"fmt"
	"path/filepath"

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
