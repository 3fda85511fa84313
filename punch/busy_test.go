package punch_test

import (
	"crypto/rand"
	"fmt"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// A new daemon arrives while a flood of random keys from many sources
// keeps the rendezvous's budget for new keys spent (issue 14, item 8). The
// rendezvous answers it Busy; the daemon echoes the cookie at once and is
// let in through the cookie lane, which the flood, never reading its
// replies, cannot use. Before cookies, the daemon waited for the flood to
// end: its keepalives lost every draw for the budget.
func TestNewDaemonGetsInDuringAKeyFlood(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		l.newKeyRate = 5 // a small budget, so that a small flood spends it
		l.restartServer(t, true)
		l.push(t, 1)
		// 40 sources, each within its own limit (20 a second), together
		// 8 times the budget: a random key from each every 50 ms.
		const sources, rounds = 40, 400 // 20 s of flood
		var flood []udpconn.Conn
		for i := range sources {
			c, err := l.net.Listen(fmt.Sprintf("198.19.200.%d:5000", i+1))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			flood = append(flood, c)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range rounds {
				for _, c := range flood {
					var k wire.Key
					rand.Read(k[:])
					b, _ := wire.Seal(nil, &wire.Keepalive{Counter: 1}, k, &[32]byte{})
					udpconn.WriteTo(c, b, mustAddr(l.addr))
				}
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
		time.Sleep(2 * time.Second) // the budget is spent
		var rec recorder
		d := l.daemon(t, "198.19.1.2:40000", &rec)
		// The daemon's first keepalive is answered Busy, its second (at once,
		// with the cookie) is let in: it learns its position within a second.
		start := time.Now()
		waitFor(10*time.Second, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known })
		took := time.Since(start)
		st := l.srv.Stats()
		if _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); !known || took > time.Second {
			t.Fatalf("under the flood the daemon was served after %v (known %v); busy %d, cookied %d", took, known, st.Busy, st.Cookied)
		}
		if st.Cookied == 0 || d.Stats().Busy == 0 {
			t.Fatalf("let in without a cookie: the flood did not spend the budget (busy %d, cookied %d)", st.Busy, st.Cookied)
		}
		l.pushArrivesAtOnce(t, &rec, "during the flood")
		close(stop)
		<-done
	})
}
