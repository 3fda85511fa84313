package punch_test

import (
	"bytes"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/wire"
)

// logBuffer collects log lines from several goroutines.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(l, nil)) }

// A daemon given the wrong --server-key (valid hex, another key) and one
// given an address where no rendezvous runs each warn within seconds, say
// which of the two it is, and keep warning at a modest pace; the rendezvous
// logs the datagrams it cannot open, rate-limited, with their source.
// Fake time.
func TestDaemonWarnsOfWrongKeyAndSilentServer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := netsim.NewMemNet(3)
		sc, err := mn.Listen("198.18.0.1:3478")
		if err != nil {
			t.Fatal(err)
		}
		var srvLog logBuffer
		labOn(t, mn, sc, true, srvLog.logger())
		wrongKey, _, _ := wire.GenerateKey()
		start := func(addr, server string, log *logBuffer) {
			conn, err := mn.Listen(addr)
			if err != nil {
				t.Fatal(err)
			}
			runDaemon(t, conn, punch.Config{StateDir: filepath.Join(t.TempDir(), "state"), Logger: log.logger(),
				Servers: []punch.Server{{Addr: mustAddr(server), Key: wrongKey, Repos: []string{"chat.git"}}}})
		}
		var wrong, silent logBuffer
		start("198.19.1.2:40000", "198.18.0.1:3478", &wrong)
		start("198.19.1.3:40000", "198.18.0.9:3478", &silent) // nothing there

		time.Sleep(12 * time.Second)
		if !strings.Contains(wrong.String(), "--server-key is probably not its key") {
			t.Fatalf("after 12 s, no warning about the key:\n%s", wrong.String())
		}
		if !strings.Contains(silent.String(), "does not answer at all") {
			t.Fatalf("after 12 s, no warning about a silent rendezvous:\n%s", silent.String())
		}
		if !strings.Contains(srvLog.String(), "fail authentication") || !strings.Contains(srvLog.String(), "198.19.1.2:40000") {
			t.Fatalf("the rendezvous did not log the datagrams it could not open, with their source:\n%s", srvLog.String())
		}
		time.Sleep(30 * time.Minute)
		for name, l := range map[string]*logBuffer{"wrong key": &wrong, "silent": &silent} {
			// 8 s, 16 s, ... 256 s, then every 5 minutes: about 12 in 30 minutes.
			if n := strings.Count(l.String(), "level=WARN"); n < 6 || n > 20 {
				t.Errorf("%s: %d warnings in 30 minutes, want a modest steady pace:\n%s", name, n, l.String())
			}
		}
		if n := strings.Count(srvLog.String(), "fail authentication"); n > 30*60/10+1 {
			t.Errorf("the rendezvous logged forged datagrams %d times in 30 minutes, more than once per 10 s", n)
		}
	})
}

// A daemon with no SSH path whose outgoing UDP is dropped while what the
// rendezvous sends still comes in: it says just that, not that the
// rendezvous is down (its STUN request is lost too). Fake time.
func TestDaemonWarnsOfOutgoingUDPDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		daemonAddr := mustAddr("198.19.1.2:40000")
		var outBlocked atomic.Bool
		l.net.Drop = func(from, _ netip.AddrPort, _ []byte) bool { return outBlocked.Load() && from == daemonAddr }
		conn, err := l.net.Listen(daemonAddr.String())
		if err != nil {
			t.Fatal(err)
		}
		var rec recorder
		var log logBuffer
		d, _ := runDaemon(t, conn, punch.Config{StateDir: filepath.Join(t.TempDir(), "state"), Logger: log.logger(), Handle: rec.handle,
			Servers: []punch.Server{{Addr: mustAddr(l.addr), Key: l.srv.PublicKey(), Repos: []string{"chat.git"}}}})
		l.waitKnown(t, d)
		l.pushArrivesAtOnce(t, &rec, "on UDP")
		outBlocked.Store(true)
		l.push(t, 2)
		if !waitFor(time.Minute, func() bool { return strings.Contains(log.String(), "its outgoing UDP is dropped") }) {
			t.Fatalf("after a minute with its outgoing UDP dropped, no warning that says so:\n%s", log.String())
		}
		if strings.Contains(log.String(), "does not answer at all") {
			t.Errorf("it also says the rendezvous does not answer at all:\n%s", log.String())
		}
	})
}
