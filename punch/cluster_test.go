package punch_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gitchat/gcn-punch/hook"
	"github.com/gitchat/gcn-punch/internal/natstest"
	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/rendezvous"
	"github.com/gitchat/gcn-punch/rendezvous/cluster"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// clusterNode is one rendezvous of a cluster, on the in-memory network.
type clusterNode struct {
	srv   *rendezvous.Server
	store *store.Store
	addr  string
	stop  func()
}

// startNode runs a rendezvous at addr with its own store (holding the
// shared identity in keys) joined to the NATS cluster at urls.
func startNode(t testing.TB, mn *netsim.MemNet, addr, name, urls string, keys string, open bool) *clusterNode {
	t.Helper()
	dir := t.TempDir()
	if keys != "" {
		for _, f := range []string{"server.key", "server.pub", "server.sign"} {
			b, err := os.ReadFile(filepath.Join(keys, f))
			if err != nil {
				continue
			}
			os.WriteFile(filepath.Join(dir, f), b, 0o600)
		}
	}
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.Connect(cluster.Options{URLs: urls, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close) // after the server's own cleanup: cleanups run last first
	conn, err := mn.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	n := &clusterNode{store: st, addr: addr}
	srv, stop := runServer(t, conn, rendezvous.Config{Store: st, Open: open, Cluster: cl})
	n.srv, n.stop = srv, func() { stop(); cl.Close() } // as kill -9: the node's NATS connection goes too
	return n
}

// twoNodes starts a JetStream server and two nodes sharing one identity:
// a beside the store that takes the pushes, and b.
func twoNodes(t *testing.T, seed uint64, open bool) (a, b *clusterNode, mn *netsim.MemNet, urls string) {
	t.Helper()
	urls = natstest.URL(natstest.Start(t, t.TempDir(), 0))
	mn = netsim.NewMemNet(seed)
	a = startNode(t, mn, "198.18.0.1:3478", "a", urls, "", open)
	b = startNode(t, mn, "198.18.0.2:3478", "b", urls, a.store.Dir, open)
	return a, b, mn, urls
}

// nodeDaemon runs a daemon that follows chat.git at one node (keepalive
// zero: learned, as by default).
func nodeDaemon(t *testing.T, mn *netsim.MemNet, addr string, n *clusterNode, rec *recorder, keepalive time.Duration) *punch.Daemon {
	t.Helper()
	d, _ := followAt(t, mn, addr, n.addr, n.srv.PublicKey(), punch.Config{Handle: rec.handle, FixedKeepalive: keepalive})
	if !realWait(20*time.Second, func() bool { _, ok := d.LastSeq(n.srv.PublicKey(), "chat.git"); return ok }) {
		t.Fatal("a daemon never learned its position")
	}
	return d
}

// push records n events in the store's log, with messages, and pokes its
// rendezvous, as the hook does.
func (n *clusterNode) push(t *testing.T, from, count int) {
	t.Helper()
	for i := from; i < from+count; i++ {
		u := store.Update{Old: fmt.Sprintf("%040x", i), New: fmt.Sprintf("%040x", i+1), Ref: "refs/heads/main"}
		n.store.AppendMessages("chat.git", []store.Message{{Old: u.Old, New: u.New, Chat: wire.Chat{Author: "alice", Subject: fmt.Sprintf("message %d", i+1)}}})
		if _, err := n.store.Append("chat.git", []store.Update{u}, time.Now()); err != nil {
			t.Fatal(err)
		}
		n.srv.Poke("chat.git")
		time.Sleep(2 * time.Millisecond)
	}
}

func waitHandled(t *testing.T, name string, rec *recorder, n int) {
	t.Helper()
	if !realWait(60*time.Second, func() bool { return len(rec.snapshot()) >= n }) {
		t.Fatalf("%s handled %d of %d", name, len(rec.snapshot()), n)
	}
	time.Sleep(200 * time.Millisecond) // a late duplicate would show now
	wantExactlyInOrder(t, name, rec.snapshot(), n)
}

// Two rendezvous nodes share one identity and a JetStream server. Pushes
// recorded beside node A reach a daemon at node B through the stream,
// exactly once, in order, with their messages. While the cluster is down,
// A's own clients still get every push (from A's log), and once it is back
// A publishes the backlog and B's daemon gets it: nothing lost or doubled.
func TestClusterTwoNodesDeliverAndCatchUp(t *testing.T) {
	natsDir, port := t.TempDir(), natstest.FreePort(t)
	ns := natstest.Start(t, natsDir, port)
	urls := natstest.URL(ns)
	mn := netsim.NewMemNet(7)
	a := startNode(t, mn, "198.18.0.1:3478", "a", urls, "", true)
	b := startNode(t, mn, "198.18.0.2:3478", "b", urls, a.store.Dir, true)
	if a.srv.PublicKey() != b.srv.PublicKey() {
		t.Fatal("the nodes do not share their identity")
	}
	var atA, atB recorder
	nodeDaemon(t, mn, "198.19.1.2:40000", a, &atA, 0)
	nodeDaemon(t, mn, "198.19.2.2:40000", b, &atB, 0)

	a.push(t, 0, 50)
	waitHandled(t, "the daemon at A", &atA, 50)
	waitHandled(t, "the daemon at B", &atB, 50)
	atB.mu.Lock()
	if ev := atB.events[49]; ev.Author != "alice" || ev.Subject != "message 50" {
		t.Fatalf("the message did not travel through the stream: %+v", ev)
	}
	atB.mu.Unlock()

	ns.Shutdown()
	ns.WaitForShutdown()
	a.push(t, 50, 10)
	waitHandled(t, "the daemon at A, the cluster down", &atA, 60)
	if got := len(atB.snapshot()); got != 50 {
		t.Fatalf("B's daemon handled %d with the cluster down, want 50", got)
	}
	natstest.Start(t, natsDir, port) // back, with its data
	waitHandled(t, "the daemon at B, the cluster back", &atB, 60)
	if st := a.srv.Stats(); st.ClusterPublished != 60 {
		t.Fatalf("A published %d events, want 60 (each once)", st.ClusterPublished)
	}
	if st := b.srv.Stats(); st.ClusterEvents != 60 || st.ClusterPublished != 0 {
		t.Fatalf("B took %d events from the stream and published %d, want 60 and 0", st.ClusterEvents, st.ClusterPublished)
	}
}

// In registered mode, a client registered beside node A (its store) is
// served by node B through the shared authorisations, and revoking it at
// A ends it at B too.
func TestClusterSharesAuthorisations(t *testing.T) {
	a, b, mn, _ := twoNodes(t, 8, false)
	state := filepath.Join(t.TempDir(), "state")
	pub, _, err := punch.LoadOrCreateKey(state)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.store.Authorise("chat.git", pub, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// As gcn-heartbeat asks the rendezvous beside the store.
	if !realWait(20*time.Second, func() bool { return a.srv.ShareAuth("chat.git", pub) == nil }) {
		t.Fatal("the authorisation was never shared")
	}
	var atB recorder
	d, _ := followAt(t, mn, "198.19.2.2:40000", b.addr, b.srv.PublicKey(), punch.Config{StateDir: state, Handle: atB.handle})
	if !realWait(20*time.Second, func() bool { _, ok := d.LastSeq(b.srv.PublicKey(), "chat.git"); return ok }) {
		t.Fatal("node B never accepted the client registered at A")
	}
	a.push(t, 0, 5)
	waitHandled(t, "the daemon at B", &atB, 5)

	os.Remove(filepath.Join(a.store.Dir, "auth", "chat.git", pub.String()))
	a.srv.Revoke(pub)
	if !realWait(20*time.Second, func() bool { return len(b.srv.Clients()) == 0 }) {
		t.Fatal("node B still serves the client revoked at A")
	}
	a.push(t, 5, 3)
	time.Sleep(time.Second)
	if got := len(atB.snapshot()); got != 5 {
		t.Fatalf("the revoked daemon handled %d events, want 5", got)
	}
}

// A daemon learns the cluster's nodes from its node and, when that node
// is killed mid-stream, moves to another: its next keepalive goes
// unanswered, and after the retries (8 s) it moves. Every push, before,
// during and after the move, is handled exactly once, in order. (A 5 s
// keepalive keeps the test short; the bound is the interval and 8 s.)
func TestClusterDaemonMovesWhenItsNodeDies(t *testing.T) {
	ns := natstest.Start(t, t.TempDir(), 0)
	urls := natstest.URL(ns)
	mn := netsim.NewMemNet(9)
	a := startNode(t, mn, "198.18.0.1:3478", "a", urls, "", true) // beside the store: the publisher
	b := startNode(t, mn, "198.18.0.2:3478", "b", urls, a.store.Dir, true)
	c := startNode(t, mn, "198.18.0.3:3478", "c", urls, a.store.Dir, true)
	var rec recorder
	d := nodeDaemon(t, mn, "198.19.1.2:40000", b, &rec, 5*time.Second)
	// Every node lists itself within a refresh; the daemon hears the list.
	if !realWait(30*time.Second, func() bool { return len(d.Status().Servers[0].Nodes) == 3 }) {
		t.Fatalf("the daemon never learned the three nodes: %+v", d.Status().Servers[0])
	}
	a.push(t, 0, 20)
	waitHandled(t, "the daemon at B", &rec, 20)
	b.stop() // as kill -9: no goodbye
	killed := time.Now()
	a.push(t, 20, 20)
	waitHandled(t, "the daemon after B died", &rec, 40)
	t.Logf("all 40 handled %v after the node died", time.Since(killed).Round(100*time.Millisecond))
	st := d.Status().Servers[0]
	if st.Addr != c.addr && st.Addr != a.addr {
		t.Fatalf("the daemon is at %s, want another node", st.Addr)
	}
	if d.Stats().NodeMoves == 0 {
		t.Fatal("no move counted")
	}
}

// The hook publishes each push to the cluster itself: with the rendezvous
// beside the store dead, pushes still reach a daemon at another node, each
// once, in order.
func TestClusterHookPublishesWhenItsRendezvousIsDown(t *testing.T) {
	a, b, mn, urls := twoNodes(t, 10, true)
	cf, _ := json.Marshal(cluster.Options{URLs: urls})
	if err := a.store.SetCluster(cf); err != nil { // as ListenAndServe writes it
		t.Fatal(err)
	}
	var rec recorder
	nodeDaemon(t, mn, "198.19.2.2:40000", b, &rec, 0)
	hookPush := func(from, n int) {
		for i := from; i < from+n; i++ {
			res, err := hook.Run(hook.Options{StoreDir: a.store.Dir, RepoID: "chat.git", Stderr: io.Discard,
				Stdin:   strings.NewReader(fmt.Sprintf("%040x %040x refs/heads/main\n", i, i+1)),
				Message: &wire.Chat{Author: "alice", Subject: fmt.Sprintf("message %d", i+1), Count: 1}})
			if err != nil || !res.Published {
				t.Fatalf("hook: %+v %v", res, err)
			}
		}
	}
	hookPush(0, 5)
	waitHandled(t, "the daemon at B", &rec, 5)
	a.stop()
	hookPush(5, 5)
	waitHandled(t, "the daemon at B, A down", &rec, 10)
	// The hook's own publication is the one the stream keeps (it
	// deduplicates A's later one): it must carry the chat message.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, ev := range rec.events {
		if want := fmt.Sprintf("message %d", ev.Seq); ev.Author != "alice" || ev.Subject != want || ev.Count != 1 {
			t.Errorf("seq %d at B: author %q, subject %q, count %d; want alice, %q, 1", ev.Seq, ev.Author, ev.Subject, ev.Count, want)
		}
	}
}

// BenchmarkClusterEndToEnd measures events through JetStream with two
// rendezvous nodes on this machine: a push recorded beside node A (its log
// and a poke, as the hook does) until a daemon at node B has handled it.
// It reports the latency (p50, p99) one push at a time, and the throughput
// of a burst of 1000 pushes.
func BenchmarkClusterEndToEnd(b *testing.B) {
	ns := natstest.Start(b, b.TempDir(), 0)
	urls := natstest.URL(ns)
	mn := netsim.NewMemNet(11)
	a := startNode(b, mn, "198.18.0.1:3478", "a", urls, "", true)
	nb := startNode(b, mn, "198.18.0.2:3478", "b", urls, a.store.Dir, true)
	var rec recorder
	conn, err := mn.Listen("198.19.2.2:40000")
	if err != nil {
		b.Fatal(err)
	}
	d, err := punch.New(punch.Config{Conn: conn, Servers: []punch.Server{{Addr: mustAddr(nb.addr), Key: nb.srv.PublicKey(), Repos: []string{"chat.git"}}},
		StateDir: filepath.Join(b.TempDir(), "state"), Handle: rec.handle})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	defer func() { cancel(); conn.Close(); <-done }()
	if !realWait(20*time.Second, func() bool { _, ok := d.LastSeq(nb.srv.PublicKey(), "chat.git"); return ok }) {
		b.Fatal("no position")
	}
	pushed := 0
	push := func() {
		u := store.Update{Old: fmt.Sprintf("%040x", pushed), New: fmt.Sprintf("%040x", pushed+1), Ref: "refs/heads/main"}
		if _, err := a.store.Append("chat.git", []store.Update{u}, time.Now()); err != nil {
			b.Fatal(err)
		}
		a.srv.Poke("chat.git")
		pushed++
	}
	var lat []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		push()
		for len(rec.snapshot()) < pushed {
			if time.Since(start) > 10*time.Second {
				b.Fatalf("push %d not handled at B", pushed)
			}
			time.Sleep(100 * time.Microsecond)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	// A burst: how fast events cross the stream into node B (its memory),
	// and how fast the daemon handles them (each saved with an fsync
	// before its ack: the daemon's disk sets that pace).
	const burst = 1000
	before := nb.srv.Stats().ClusterEvents
	start := time.Now()
	for range burst {
		push()
	}
	if !realWait(60*time.Second, func() bool { return nb.srv.Stats().ClusterEvents-before >= burst }) {
		b.Fatal("the burst did not reach node B")
	}
	b.ReportMetric(burst/time.Since(start).Seconds(), "to-node-B-events/s")
	if !realWait(60*time.Second, func() bool { return len(rec.snapshot()) >= pushed }) {
		b.Fatal("the burst was not handled at B")
	}
	b.ReportMetric(burst/time.Since(start).Seconds(), "handled-events/s")
	wantExactlyInOrder(b, "the daemon at B", rec.snapshot(), pushed)
}

// A daemon keeps the node list in its state: restarted while the node it
// was configured with is down, it moves to another and gets what it missed.
func TestClusterRestartedDaemonUsesSavedNodes(t *testing.T) {
	a, b, mn, urls := twoNodes(t, 12, true)
	startNode(t, mn, "198.18.0.3:3478", "c", urls, a.store.Dir, true)
	state := filepath.Join(t.TempDir(), "state")
	var rec recorder
	start := func() (*punch.Daemon, func()) {
		return followAt(t, mn, "198.19.1.2:40000", b.addr, b.srv.PublicKey(), punch.Config{StateDir: state, Handle: rec.handle, FixedKeepalive: 5 * time.Second})
	}
	d, stop := start()
	if !realWait(30*time.Second, func() bool { return len(d.Status().Servers[0].Nodes) == 3 }) {
		t.Fatalf("the daemon never learned the three nodes: %+v", d.Status().Servers[0])
	}
	a.push(t, 0, 5)
	waitHandled(t, "the daemon at B", &rec, 5)
	stop()
	b.stop()
	a.push(t, 5, 5)
	d, _ = start() // still configured with B, which is gone
	waitHandled(t, "the restarted daemon", &rec, 10)
	if st := d.Status().Servers[0]; st.Addr == b.addr {
		t.Fatalf("the daemon is still at the dead node: %+v", st)
	}
}
