package action

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/godbus/dbus/v5"

	"github.com/gitchat/gcn-punch/punch"
)

// Desktop sends freedesktop notifications (org.freedesktop.Notifications)
// over the session bus. The connection is made on first use and remade after
// a failure, so a bus that appears later (a login) is picked up.
type Desktop struct {
	// Address overrides DBUS_SESSION_BUS_ADDRESS; tests point it at their own bus.
	Address string
	mu      sync.Mutex
	conn    *dbus.Conn
}

// SessionBusAvailable reports whether a session bus can be found: the
// environment names one, or the systemd user bus socket exists.
func SessionBusAvailable() bool {
	if os.Getenv("DBUS_SESSION_BUS_ADDRESS") != "" {
		return true
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "bus")); err == nil {
			return true
		}
	}
	return false
}

func (d *Desktop) connect() (*dbus.Conn, error) {
	if d.conn != nil && d.conn.Connected() {
		return d.conn, nil
	}
	addr := d.Address
	if addr == "" {
		addr = os.Getenv("DBUS_SESSION_BUS_ADDRESS")
	}
	if addr == "" {
		if r := os.Getenv("XDG_RUNTIME_DIR"); r != "" {
			addr = "unix:path=" + filepath.Join(r, "bus")
		}
	}
	if addr == "" {
		return nil, fmt.Errorf("no session bus")
	}
	c, err := dbus.Connect(addr)
	if err != nil {
		return nil, err
	}
	d.conn = c
	return c, nil
}

// Notify shows one event. The summary and body are plain text; the
// notification server does the display, nothing is interpreted here.
// An event whose message is known (msg not nil) shows as a chat message
// ("alice: lunch at 1?", "chat.git · +2 more"), else as a push.
func (d *Desktop) Notify(ev punch.Event, msg *Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	c, err := d.connect()
	if err != nil {
		return err
	}
	summary := "git push to " + ev.Repo
	body := fmt.Sprintf("%s  %s → %s", ev.Ref, short(ev.Old), short(ev.New))
	switch {
	case ev.Resync:
		body = "missed events: pulled everything"
	case msg != nil:
		summary = msg.Author + ": " + msg.Subject
		body = ev.Repo
		if msg.Count > 1 {
			body += fmt.Sprintf(" · +%d more", msg.Count-1)
		}
	}
	obj := c.Object("org.freedesktop.Notifications", "/org/freedesktop/Notifications")
	call := obj.Call("org.freedesktop.Notifications.Notify", 0,
		"gcn-punch", uint32(0), "", summary, body, []string{}, map[string]dbus.Variant{}, int32(-1))
	if call.Err != nil {
		d.conn.Close()
		d.conn = nil
	}
	return call.Err
}

// Close releases the bus connection.
func (d *Desktop) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		d.conn.Close()
		d.conn = nil
	}
}

func short(oid string) string {
	if len(oid) > 10 {
		return oid[:10]
	}
	return oid
}
