package punch_test

import (
	"crypto/rand"
	"fmt"
	"strings"
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

// Forged datagrams to a daemon (they held in the adversarial run; kept so):
// notifications sealed by a stranger's key, by another client's key, and
// under the server's name with a box that does not open, garbage, a truncated envelope and a Busy from an
// address that is not the rendezvous's are all counted and dropped, none
// is handled, and a real push still arrives once.
func TestDaemonDropsForgedDatagrams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		var rec recorder
		d := l.daemon(t, "198.19.1.2:40000", &rec)
		waitFor(10*time.Second, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known })
		evil, err := l.net.Listen("198.19.66.6:3478")
		if err != nil {
			t.Fatal(err)
		}
		defer evil.Close()
		daemonAddr := mustAddr("198.19.1.2:40000")
		_, evilPriv, _ := wire.GenerateKey()
		_, otherPriv, _ := wire.GenerateKey()
		notify := func(recipient wire.Key) *wire.Notify {
			return &wire.Notify{Seq: 1, RepoID: "chat.git", Ref: "refs/heads/main", Old: strings.Repeat("0", 40), New: strings.Repeat("a", 40), Recipient: recipient}
		}
		// The daemon's key is not exported; a forged box fails whatever it is.
		forgedKey := wire.PublicKey(evilPriv)
		sealedByStranger, _ := wire.Seal(nil, notify(forgedKey), forgedKey, &[32]byte{1})
		claimsServer, _ := wire.Seal(nil, notify(forgedKey), l.srv.PublicKey(), &[32]byte{2})
		otherShared := wire.SharedKey(l.srv.PublicKey(), otherPriv)
		notMine, _ := wire.Seal(nil, notify(wire.PublicKey(otherPriv)), wire.PublicKey(otherPriv), &otherShared)
		for _, b := range [][]byte{
			sealedByStranger, claimsServer, notMine,
			[]byte("gcn\x01 garbage"), claimsServer[:70], []byte("not gcn at all"),
			wire.AppendBusy(nil, [wire.CookieLen]byte{9}),
		} {
			udpconn.WriteTo(evil, b, daemonAddr)
		}
		synctest.Wait()
		st := d.Stats()
		if got := rec.snapshot(); len(got) != 0 {
			t.Fatalf("a forged datagram was handled: %v", got)
		}
		if dropped := st.Forged + st.Malformed + st.Unexpected; dropped != 7 || st.Busy != 0 {
			t.Fatalf("forged %d, malformed %d, unexpected %d, busy %d: want the 7 datagrams counted as dropped and no Busy taken",
				st.Forged, st.Malformed, st.Unexpected, st.Busy)
		}
		l.pushArrivesAtOnce(t, &rec, "after the forgeries")
	})
}
