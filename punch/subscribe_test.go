package punch_test

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

var mainOnly = []string{"refs/heads/main"}

// refDaemon starts a daemon that follows chat.git's refs matching refs.
func (l *lab) refDaemon(t *testing.T, addr string, refs []string, rec *recorder) *punch.Daemon {
	d, _ := followAt(t, l.net, addr, l.addr, l.srv.PublicKey(), punch.Config{Handle: rec.handle, Refs: refs})
	return d
}

// followAt runs, on a new socket at addr, a daemon that follows chat.git at
// the rendezvous at server, configured by cfg besides (its state in a
// fresh directory unless cfg names one), until stop or the test's end.
func followAt(t *testing.T, mn *netsim.MemNet, addr, server string, key wire.Key, cfg punch.Config) (d *punch.Daemon, stop func()) {
	t.Helper()
	conn, err := mn.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Servers = []punch.Server{{Addr: mustAddr(server), Key: key, Repos: []string{"chat.git"}}}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(t.TempDir(), "state")
	}
	return runDaemon(t, conn, cfg)
}

// pushMixed pushes n events, every third to refs/heads/main and the others
// to refs/heads/side, each with the chat message the hook would write.
func (l *lab) pushMixed(t *testing.T, n int) {
	for i := range n {
		ref := "refs/heads/side"
		if i%3 == 0 {
			ref = "refs/heads/main"
		}
		u := store.Update{Old: fmt.Sprintf("%040x", i), New: fmt.Sprintf("%040x", i+1), Ref: ref}
		if err := l.store.AppendMessages("chat.git", []store.Message{{Old: u.Old, New: u.New,
			Chat: wire.Chat{Count: uint32(i + 1), Author: "alice", Subject: fmt.Sprintf("message %d", i+1)}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := l.store.Append("chat.git", []store.Update{u}, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := l.srv.Poke("chat.git"); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// wantMainOnly checks that a daemon following refs/heads/main handled
// exactly the events on main of n mixed pushes, once each, in order, with
// their messages when withMessages.
func wantMainOnly(t *testing.T, name string, rec *recorder, n int, withMessages bool) {
	t.Helper()
	rec.mu.Lock()
	evs := append([]punch.Event(nil), rec.events...)
	rec.mu.Unlock()
	want := (n + 2) / 3
	if len(evs) != want {
		t.Fatalf("%s handled %d events, want the %d on main", name, len(evs), want)
	}
	for i, ev := range evs {
		seq := uint64(3*i + 1)
		if ev.Seq != seq || ev.Ref != "refs/heads/main" {
			t.Fatalf("%s: event %d is seq %d on %s, want seq %d on main", name, i, ev.Seq, ev.Ref, seq)
		}
		wantMsg := fmt.Sprintf("message %d", seq)
		if withMessages && (ev.Author != "alice" || ev.Subject != wantMsg || ev.Count != int(seq)) {
			t.Fatalf("%s: event %d carries %q %q %d, want alice %q %d", name, seq, ev.Author, ev.Subject, ev.Count, wantMsg, seq)
		}
		if !withMessages && ev.Author != "" {
			t.Fatalf("%s: a message came from a rendezvous that did not take the Subscribe", name)
		}
	}
}

// A daemon with --refs refs/heads/main gets only main's events, with their
// chat messages, and the rendezvous sends nothing for the others: one
// datagram per wanted event. A daemon without filters gets every event.
func TestRefFilterAtTheRendezvousAndMessages(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		var a, b recorder
		da := l.refDaemon(t, "198.19.1.2:40000", mainOnly, &a)
		l.refDaemon(t, "198.19.2.2:40000", nil, &b)
		if !waitFor(time.Minute, func() bool { return l.srv.Stats().Subscribes == 2 }) {
			t.Fatalf("subscribes taken: %d, want 2", l.srv.Stats().Subscribes)
		}
		time.Sleep(5 * time.Second)
		const n = 30
		l.pushMixed(t, n)
		waitFor(time.Minute, func() bool { return len(a.snapshot()) >= n/3 && len(b.snapshot()) >= n })
		time.Sleep(10 * time.Second)
		synctest.Wait()
		wantMainOnly(t, "filtered daemon", &a, n, true)
		wantExactlyInOrder(t, "unfiltered daemon", b.snapshot(), n)
		if b.events[n-1].Subject != fmt.Sprintf("message %d", n) {
			t.Fatalf("unfiltered daemon's last message: %+v", b.events[n-1])
		}
		st := l.srv.Stats()
		if st.Notifies != n+n/3 || st.Retransmits != 0 {
			t.Fatalf("rendezvous sent %d notifications (%d again), want %d: filtered events must cost no datagram", st.Notifies, st.Retransmits, n+n/3)
		}
		if st.Filtered < 2*n/3 {
			t.Fatalf("rendezvous filtered %d, want at least %d", st.Filtered, 2*n/3)
		}
		if f := da.Stats().Filtered; f != 0 {
			t.Fatalf("the daemon filtered %d itself: the rendezvous should have", f)
		}
		// Acks stayed correct across the skipped events: the next push to
		// main arrives at once, and a side push costs nothing.
		a.mu.Lock()
		a.events = nil
		a.mu.Unlock()
		l.pushMixed(t, 1) // seq n+1 is on refs/heads/main again (i = 0)
		if !waitFor(time.Second, func() bool { a.mu.Lock(); defer a.mu.Unlock(); return len(a.events) == 1 }) {
			t.Fatal("the next event on main did not arrive within a second")
		}
	})
}

// Under 25% loss each way the rendezvous's skips reorder nothing: the
// filtered daemon handles exactly main's events, in order.
func TestRefFilterUnderLoss(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 25, true)
		var a recorder
		l.refDaemon(t, "198.19.1.2:40000", mainOnly, &a)
		if !waitFor(5*time.Minute, func() bool { return l.srv.Stats().Subscribes >= 1 }) {
			t.Fatal("the Subscribe never arrived")
		}
		time.Sleep(30 * time.Second)
		const n = 60
		l.pushMixed(t, n)
		waitFor(5*time.Minute, func() bool { return len(a.snapshot()) >= n/3 })
		time.Sleep(time.Minute)
		synctest.Wait()
		wantMainOnly(t, "filtered daemon", &a, n, true)
	})
}

// Against a rendezvous that does not take Subscribe (an older one; here
// its Subscribes are dropped), the daemon gets every event as a plain
// Notify and filters by itself: the same events handled, without messages.
func TestRefFilterWithoutTheRendezvous(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		sub := &wire.Subscribe{Flags: wire.SubscribeMessages, Repos: []wire.RepoPrefs{{RepoID: "chat.git", Refs: mainOnly}}}
		subLen := len(sub.AppendPlaintext(nil)) + wire.Overhead
		dropped := 0
		l.net.Drop = func(_, to netip.AddrPort, b []byte) bool {
			if to == mustAddr(l.addr) && len(b) == subLen {
				dropped++
				return true
			}
			return false
		}
		var a recorder
		da := l.refDaemon(t, "198.19.1.2:40000", mainOnly, &a)
		time.Sleep(5 * time.Minute)
		const n = 30
		l.pushMixed(t, n)
		waitFor(time.Minute, func() bool { return len(a.snapshot()) >= n/3 })
		time.Sleep(10 * time.Second)
		synctest.Wait()
		wantMainOnly(t, "daemon", &a, n, false)
		if f := da.Stats().Filtered; f != 2*n/3 {
			t.Fatalf("daemon filtered %d itself, want %d", f, 2*n/3)
		}
		if dropped == 0 || dropped > 4 {
			t.Fatalf("%d Subscribes sent unanswered, want 1 to 4 (bounded tries)", dropped)
		}
	})
}
