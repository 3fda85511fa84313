package punch_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// fanWorld is a rendezvous with --fanout and daemons, in this process, on
// real loopback sockets: ICE runs for real on each daemon's one socket.
type fanWorld struct {
	t     *testing.T
	srv   *rendezvous.Server
	st    *store.Store
	addr  string
	repos []string // what every daemon follows; nil: chat.git
	refs  []string // the --refs of daemons started while set
	daems []*punch.Daemon
	recs  []*recorder
	stops []func() // each daemon's: stops it and waits
	dirs  []string // each daemon's state directory
}

func newFanWorld(t *testing.T, arity int) *fanWorld {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := udpconn.Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := rendezvous.New(rendezvous.Config{Conn: conn, Store: st, Open: true, Fanout: arity})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &fanWorld{t: t, srv: srv, st: st, addr: conn.LocalAddrPort().String()}
}

func (w *fanWorld) daemon(noPeer bool) (*punch.Daemon, *recorder) {
	return w.start(noPeer, 0)
}

// daemonKeepalive starts a daemon with a fixed keepalive interval.
func (w *fanWorld) daemonKeepalive(ka time.Duration) (*punch.Daemon, *recorder) {
	return w.start(false, ka)
}

func (w *fanWorld) start(noPeer bool, keepalive time.Duration) (*punch.Daemon, *recorder) {
	w.t.Helper()
	rec := &recorder{}
	dir := filepath.Join(w.t.TempDir(), "state")
	d, stop := w.run(dir, rec, noPeer, keepalive)
	w.daems = append(w.daems, d)
	w.recs = append(w.recs, rec)
	w.stops = append(w.stops, stop)
	w.dirs = append(w.dirs, dir)
	return d, rec
}

// run starts a daemon on a new socket with the state in dir.
func (w *fanWorld) run(dir string, rec *recorder, noPeer bool, keepalive time.Duration) (*punch.Daemon, func()) {
	w.t.Helper()
	conn, err := udpconn.Listen("127.0.0.1:0", nil)
	if err != nil {
		w.t.Fatal(err)
	}
	repos := w.repos
	if repos == nil {
		repos = []string{"chat.git"}
	}
	d, err := punch.New(punch.Config{Conn: conn, Servers: []punch.Server{{Addr: mustAddr(w.addr), Key: w.srv.PublicKey(), Repos: repos}},
		StateDir: dir, Handle: rec.handle, NoPeer: noPeer, FixedKeepalive: keepalive, Refs: w.refs})
	if err != nil {
		w.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	w.t.Cleanup(stop)
	return d, stop
}

// restart stops daemon i and starts it again with the same key and state,
// on a new socket (a new port), as a reboot does.
func (w *fanWorld) restart(i int) {
	w.stops[i]()
	w.daems[i], w.stops[i] = w.run(w.dirs[i], w.recs[i], false, 0)
}

func (w *fanWorld) push(n int) { w.pushTo("chat.git", n) }

func (w *fanWorld) pushTo(repo string, n int) {
	w.t.Helper()
	for i := range n {
		u := store.Update{Old: fmt.Sprintf("%040x", i), New: fmt.Sprintf("%040x", i+1), Ref: "refs/heads/main"}
		if err := w.st.AppendMessages(repo, []store.Message{{Old: u.Old, New: u.New, Chat: wire.Chat{Author: "alice", Subject: fmt.Sprintf("message %d", i+1)}}}); err != nil {
			w.t.Fatal(err)
		}
		if _, err := w.st.Append(repo, []store.Update{u}, time.Now()); err != nil {
			w.t.Fatal(err)
		}
		if err := w.srv.Poke(repo); err != nil {
			w.t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// wantAllExactly waits (bounded) until every daemon handled n events, then
// checks that each handled 1..n exactly once, in order.
func (w *fanWorld) wantAllExactly(t *testing.T, n int) {
	t.Helper()
	for i, rec := range w.recs {
		if !realWait(30*time.Second, func() bool { return len(rec.snapshot()) >= n }) {
			t.Fatalf("daemon %d handled %d of %d", i, len(rec.snapshot()), n)
		}
	}
	time.Sleep(200 * time.Millisecond) // a late duplicate would show now
	for i, rec := range w.recs {
		wantExactlyInOrder(t, fmt.Sprintf("daemon %d", i), rec.snapshot(), n)
	}
}

// realWait polls cond every 10 ms of real time, at most limit.
func realWait(limit time.Duration, cond func() bool) bool {
	for end := time.Now().Add(limit); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// connected reports whether every tree edge has formed a path.
func (w *fanWorld) connected(members int) bool {
	trees := w.srv.Trees()
	if len(trees) != 1 || trees[0].Size != members {
		return false
	}
	for _, m := range trees[0].Members {
		if m.Parent != "rendezvous" && m.Edge != "connected" {
			return false
		}
	}
	return true
}

// Three daemons in a chain (arity 1): the rendezvous sends to the first, which
// forwards to the second, which forwards to the third, over paths ICE formed
// on each daemon's one socket. Every event arrives exactly once, in order,
// everywhere; the second and third took events from their parents; a daemon
// with --no-peer stays out of the tree and is served directly.
func TestFanoutChainOverICE(t *testing.T) {
	w := newFanWorld(t, 1)
	for i := range 3 {
		w.daemon(false) // one at a time: the chain is in the order they start
		if !realWait(20*time.Second, func() bool { return w.connected(i + 1) }) {
			t.Fatalf("the tree never formed: %+v", w.srv.Trees())
		}
	}
	leafD, leafRec := w.daemon(true)
	for _, d := range w.daems {
		if !realWait(10*time.Second, func() bool { _, ok := d.LastSeq(w.srv.PublicKey(), "chat.git"); return ok }) {
			t.Fatal("a daemon never learned its position")
		}
	}
	w.push(20)
	w.wantAllExactly(t, 20)
	fromPeer := 0
	for _, d := range w.daems[:3] {
		st := d.Stats()
		if st.FromPeer > 0 {
			fromPeer++
		}
	}
	if fromPeer < 2 {
		t.Fatalf("%d daemons took events from a peer, want the two below the first", fromPeer)
	}
	if st := leafD.Stats(); st.FromPeer != 0 || st.PunchAttempts != 0 {
		t.Fatalf("--no-peer took part: %+v", st)
	}
	wantExactlyInOrder(t, "the --no-peer daemon", leafRec.snapshot(), 20)
	// The chat message travelled with each event, signed, down the chain.
	for i, rec := range w.recs {
		rec.mu.Lock()
		for _, ev := range rec.events {
			if ev.Author != "alice" || ev.Subject != fmt.Sprintf("message %d", ev.Seq) {
				t.Errorf("daemon %d, event %d: message %q %q", i, ev.Seq, ev.Author, ev.Subject)
			}
		}
		rec.mu.Unlock()
	}
	var st punch.Status = w.daems[1].Status()
	if r := st.Servers[0].Repos[0]; r.Parent == nil || r.Parent.Path == "" || r.Parent.Received == 0 {
		t.Fatalf("the middle daemon's status does not show its parent: %+v", r)
	}
	if r := w.daems[0].Status().Servers[0].Repos[0]; len(r.Children) != 1 || r.Children[0].Forwarded == 0 {
		t.Fatalf("the first daemon's status does not show its child: %+v", r)
	}
}

// Two daemons that both follow two repositories are neighbours in both
// trees: two edges between the same two sockets. ICE's mux sorts what it
// reads by remote address first, so a second agent for the same peer never
// heard its checks answered, and the second repository fell back to direct
// sending. Now the edges share one path: both connect, and both
// repositories' events travel over it, also after ICE's consent checks
// have run for longer than their failure timeout (2 s keepalives: a check
// every second, failed after about 6.5 s without answers).
func TestFanoutSamePeerInTwoRepositoriesSharesOnePath(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 10 s of consent checks")
	}
	w := newFanWorld(t, 1)
	w.repos = []string{"chat.git", "ops.git"}
	connectedIn := func(repo string, members int) bool {
		for _, tr := range w.srv.Trees() {
			if tr.Repo == repo {
				if tr.Size != members {
					return false
				}
				for _, m := range tr.Members {
					if m.Parent != "rendezvous" && m.Edge != "connected" {
						return false
					}
				}
				return true
			}
		}
		return false
	}
	for i := range 2 {
		w.daemonKeepalive(2 * time.Second)
		for _, repo := range w.repos {
			if !realWait(20*time.Second, func() bool { return connectedIn(repo, i+1) }) {
				t.Fatalf("the %s tree never formed with %d members: %+v", repo, i+1, w.srv.Trees())
			}
		}
	}
	for _, d := range w.daems {
		for _, repo := range w.repos {
			if !realWait(10*time.Second, func() bool { _, ok := d.LastSeq(w.srv.PublicKey(), repo); return ok }) {
				t.Fatalf("a daemon never learned its position in %s", repo)
			}
		}
	}
	time.Sleep(10 * time.Second)
	for _, repo := range w.repos {
		if !connectedIn(repo, 2) {
			t.Fatalf("after 10 s of consent checks the %s edge is down: %+v", repo, w.srv.Trees())
		}
	}
	w.pushTo("chat.git", 5)
	w.pushTo("ops.git", 5)
	for i, rec := range w.recs {
		for _, repo := range w.repos {
			if !realWait(20*time.Second, func() bool { return len(rec.of(repo)) >= 5 }) {
				t.Fatalf("daemon %d handled %v of %s", i, rec.of(repo), repo)
			}
			wantExactlyInOrder(t, fmt.Sprintf("daemon %d, %s", i, repo), rec.of(repo), 5)
		}
	}
	if st := w.daems[1].Stats(); st.FromPeer != 10 || st.PunchFailed != 0 {
		t.Fatalf("the child took %d of 10 events from its parent, %d punches failed", st.FromPeer, st.PunchFailed)
	}
	for i, d := range w.daems {
		if st := d.Stats(); st.PunchAttempts != 1 && i == 1 || st.PunchAttempts > 1 {
			t.Fatalf("daemon %d sought %d paths: an edge was lost and made again (want one path to the one peer)", i, st.PunchAttempts)
		}
	}
}

// The middle of a chain restarts (same key, new port, nothing of the tree
// remembered): it rejoins, the rendezvous makes both its edges again, and
// the events after the restart reach the last daemon through its parent
// again, exactly once, in order, everywhere.
func TestFanoutRestartedParentRejoins(t *testing.T) {
	w := newFanWorld(t, 1)
	for i := range 3 {
		w.daemon(false)
		if !realWait(20*time.Second, func() bool { return w.connected(i + 1) }) {
			t.Fatalf("the tree never formed: %+v", w.srv.Trees())
		}
	}
	w.push(5)
	for i, rec := range w.recs {
		if !realWait(30*time.Second, func() bool { return len(rec.snapshot()) >= 5 }) {
			t.Fatalf("daemon %d handled %d of 5", i, len(rec.snapshot()))
		}
	}
	w.restart(1)
	// The first event after the restart reaches the restarted daemon from
	// the rendezvous after its deadline, and makes it rejoin.
	w.push(1)
	if !realWait(30*time.Second, func() bool { return len(w.recs[1].snapshot()) >= 6 }) {
		t.Fatalf("the restarted daemon handled %d of 6", len(w.recs[1].snapshot()))
	}
	if !realWait(30*time.Second, func() bool { return w.connected(3) && w.daems[1].Stats().PunchAttempts > 0 }) {
		t.Fatalf("the tree did not heal: %+v", w.srv.Trees())
	}
	fromPeer := w.daems[2].Stats().FromPeer
	w.push(10)
	w.wantAllExactly(t, 16)
	if got := w.daems[2].Stats().FromPeer - fromPeer; got == 0 {
		t.Fatal("after the rejoin the last daemon took nothing from its parent")
	}
}

// A hostile parent (a test hook in the forwarding path) drops every third
// event, alters every fourth, replays what it forwarded before, and invents
// an event of its own. Its child still handles every real event exactly
// once, in order, and nothing else: altered and invented events fail the
// server's signature, replays are duplicates, and what was dropped reaches
// the child directly after its deadline.
func TestFanoutHostileParent(t *testing.T) {
	w := newFanWorld(t, 1)
	bad, _ := w.daemon(false)
	var sent []*wire.Forward
	punch.SetForwardHook(bad, func(evs []*wire.Forward) []*wire.Forward {
		var out []*wire.Forward
		for _, f := range evs {
			switch {
			case f.Seq%3 == 0:
				continue // dropped
			case f.Seq%4 == 0:
				c := *f
				c.Ref = "refs/heads/evil" // altered: the signature no longer holds
				out = append(out, &c)
			default:
				out = append(out, f)
			}
			invented := *f
			invented.Seq += 1000 // invented: signed by nobody
			invented.Sig[0] ^= 0xff
			out = append(out, &invented)
		}
		out = append(out, sent...) // replayed
		sent = append(sent, evs...)
		return out
	})
	// The hostile daemon joins first, so it is the rendezvous's child and
	// the next one's parent.
	if !realWait(20*time.Second, func() bool { return w.connected(1) }) {
		t.Fatalf("the first daemon never joined: %+v", w.srv.Trees())
	}
	_, childRec := w.daemon(false)
	if !realWait(20*time.Second, func() bool { return w.connected(2) }) {
		t.Fatalf("the tree never formed: %+v", w.srv.Trees())
	}
	for _, d := range w.daems {
		if !realWait(10*time.Second, func() bool { _, ok := d.LastSeq(w.srv.PublicKey(), "chat.git"); return ok }) {
			t.Fatal("a daemon never learned its position")
		}
	}
	w.push(12)
	if !realWait(30*time.Second, func() bool { return len(childRec.snapshot()) >= 12 }) {
		t.Fatalf("the child handled %d of 12", len(childRec.snapshot()))
	}
	time.Sleep(300 * time.Millisecond)
	wantExactlyInOrder(t, "the hostile parent's child", childRec.snapshot(), 12)
	st := w.daems[1].Stats()
	if st.Forged == 0 || st.Duplicates == 0 {
		t.Fatalf("the child's counters do not show the forgeries and replays it refused: %+v", st)
	}
}

// Across every keepalive interval the daemon may use, ICE's consent checks
// come more often than its timeouts: an idle peer path is never declared
// dead between two checks (it was, with fixed 5 s and 10 s timeouts and a
// check every half keepalive).
func TestICEConsentOutlastsItsInterval(t *testing.T) {
	for ka := punch.MinKeepalive; ka <= punch.MaxKeepalive; ka += time.Second {
		every, suspect, failed := punch.ICEConsent(ka)
		if every > ka/2+time.Second || suspect <= 2*every || failed <= every {
			t.Fatalf("keepalive %v: checks every %v, suspect after %v, failed %v later", ka, every, suspect, failed)
		}
	}
}

// An idle peer path outlives a keepalive interval without being torn down:
// with a 30 s keepalive, 20 s of silence, then a push still goes through
// the parent.
func TestFanoutIdlePathSurvives(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: 20 s of idle time")
	}
	w := newFanWorld(t, 1)
	for i := range 2 {
		w.daemonKeepalive(30 * time.Second)
		if !realWait(20*time.Second, func() bool { return w.connected(i + 1) }) {
			t.Fatalf("the tree never formed: %+v", w.srv.Trees())
		}
	}
	for _, d := range w.daems {
		if !realWait(10*time.Second, func() bool { _, ok := d.LastSeq(w.srv.PublicKey(), "chat.git"); return ok }) {
			t.Fatal("a daemon never learned its position")
		}
	}
	time.Sleep(20 * time.Second)
	if !w.connected(2) {
		t.Fatalf("the idle edge was torn down: %+v", w.srv.Trees())
	}
	w.push(1)
	if !realWait(10*time.Second, func() bool { return len(w.recs[1].snapshot()) == 1 }) {
		t.Fatal("the push did not arrive")
	}
	if st := w.daems[1].Stats(); st.FromPeer != 1 {
		t.Fatalf("the child took %d events from its parent after the idle time, want 1", st.FromPeer)
	}
}

// With fan-out on, a daemon that follows only some refs is served
// directly, out of the tree, so that the rendezvous can leave the other
// events out: it sends nothing for them, and the daemon filters nothing
// itself. The others still form their tree.
func TestFanoutLeavesFilteredFollowersOut(t *testing.T) {
	w := newFanWorld(t, 3)
	w.daemon(false)
	w.daemon(false)
	w.refs = mainOnly
	filtered, rec := w.daemon(false)
	w.refs = nil
	if !realWait(20*time.Second, func() bool { return w.connected(2) && w.srv.Stats().Subscribes >= 3 }) {
		t.Fatalf("the tree of the two unfiltered daemons never formed: %+v", w.srv.Trees())
	}
	for _, d := range w.daems {
		if !realWait(10*time.Second, func() bool { _, ok := d.LastSeq(w.srv.PublicKey(), "chat.git"); return ok }) {
			t.Fatal("a daemon never learned its position")
		}
	}
	const n = 30
	for i := range n {
		ref := "refs/heads/side"
		if i%3 == 0 {
			ref = "refs/heads/main"
		}
		if _, err := w.st.Append("chat.git", []store.Update{{Old: fmt.Sprintf("%040x", i), New: fmt.Sprintf("%040x", i+1), Ref: ref}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		w.srv.Poke("chat.git")
		time.Sleep(5 * time.Millisecond)
	}
	for i, r := range w.recs[:2] {
		if !realWait(30*time.Second, func() bool { return len(r.snapshot()) >= n }) {
			t.Fatalf("daemon %d handled %d of %d", i, len(r.snapshot()), n)
		}
		wantExactlyInOrder(t, fmt.Sprintf("daemon %d", i), r.snapshot(), n)
	}
	if !realWait(30*time.Second, func() bool { return len(rec.snapshot()) >= n/3 }) {
		t.Fatalf("the filtered daemon handled %d of %d", len(rec.snapshot()), n/3)
	}
	time.Sleep(200 * time.Millisecond)
	wantMainOnly(t, "filtered daemon", rec, n, false)
	if f := filtered.Stats().Filtered; f != 0 {
		t.Fatalf("the filtered daemon left out %d events itself: the rendezvous sent them", f)
	}
	if st := w.srv.Stats(); st.Filtered < 2*n/3 {
		t.Fatalf("the rendezvous filtered %d events, want at least %d", st.Filtered, 2*n/3)
	}
	if trees := w.srv.Trees(); len(trees) != 1 || trees[0].Size != 2 {
		t.Fatalf("the filtered daemon is in the tree: %+v", trees)
	}
}
