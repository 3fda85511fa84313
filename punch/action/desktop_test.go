package action

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/gitchat/gcn-punch/punch"
)

// notificationServer stands in for the desktop's notification daemon.
type notificationServer struct {
	mu   sync.Mutex
	got  []string
	seen chan struct{}
}

func (n *notificationServer) Notify(app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	n.mu.Lock()
	n.got = append(n.got, app+"|"+summary+"|"+body)
	n.mu.Unlock()
	n.seen <- struct{}{}
	return 1, nil
}

// startBus runs a real dbus-daemon on a private socket for the test.
func startBus(t *testing.T) string {
	t.Helper()
	if _, err := exec.LookPath("dbus-daemon"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("dbus-daemon not installed: .ci/run must install the dbus package")
		}
		t.Skip("dbus-daemon not installed (apt-get install dbus)")
	}
	sock := filepath.Join(t.TempDir(), "bus")
	cmd := exec.Command("dbus-daemon", "--session", "--nofork", "--print-address=1", "--address=unix:path="+sock)
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon gave no address: %v", err)
	}
	return strings.TrimSpace(line)
}

func TestDesktopNotificationOverRealBus(t *testing.T) {
	addr := startBus(t)
	srvConn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer srvConn.Close()
	ns := &notificationServer{seen: make(chan struct{}, 4)}
	if err := srvConn.Export(ns, "/org/freedesktop/Notifications", "org.freedesktop.Notifications"); err != nil {
		t.Fatal(err)
	}
	if reply, err := srvConn.RequestName("org.freedesktop.Notifications", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("cannot own the name: %v %v", reply, err)
	}
	d := &Desktop{Address: addr}
	defer d.Close()
	ev := punch.Event{Repo: "chat.git", Ref: "refs/heads/main", Old: strings.Repeat("1", 40), New: strings.Repeat("2", 40), Seq: 3}
	// shown sends one notification and returns what the server got.
	shown := func(send func() error) string {
		t.Helper()
		if err := send(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ns.seen:
		case <-time.After(5 * time.Second):
			t.Fatal("the notification server got nothing")
		}
		ns.mu.Lock()
		defer ns.mu.Unlock()
		return ns.got[len(ns.got)-1]
	}
	if got, want := shown(func() error { return d.Notify(ev, nil) }), "gcn-punch|git push to chat.git|refs/heads/main  1111111111 → 2222222222"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	// With the message read from the clone: a chat line.
	msg := &Message{Author: "alice", Subject: "lunch at 1?", Count: 3}
	if got, want := shown(func() error { return d.Notify(ev, msg) }), "gcn-punch|alice: lunch at 1?|chat.git · +2 more"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// With no notification service on the bus, Notify reports an error and the
// next call reconnects rather than reusing a broken connection.
func TestDesktopWithoutService(t *testing.T) {
	addr := startBus(t)
	d := &Desktop{Address: addr}
	defer d.Close()
	if err := d.Notify(punch.Event{Repo: "r", Ref: "refs/heads/m"}, nil); err == nil {
		t.Fatal("no error without a notification service")
	}
	if d.conn != nil {
		t.Fatal("kept a connection after a failed call")
	}
}
