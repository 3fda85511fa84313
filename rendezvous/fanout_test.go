package rendezvous

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// fanLab is a rendezvous with --fanout on an in-memory network and fake
// clients whose datagrams the tests hand to it, and whose inboxes collect
// what it sends. Used inside a synctest bubble.
type fanLab struct {
	t       *testing.T
	s       *Server
	net     *netsim.MemNet
	clients []*fanClient
}

type fanClient struct {
	*testClient
	addr netip.AddrPort
	conn *netsim.MemConn
	mu   sync.Mutex
	got  []wire.Message
}

func newFanLab(t *testing.T, arity, n int) *fanLab {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	mn := netsim.NewMemNet(1)
	conn, _ := mn.Listen("198.18.0.1:3478")
	s, err := New(Config{Conn: conn, Store: st, Open: true, Fanout: arity})
	if err != nil {
		t.Fatal(err)
	}
	l := &fanLab{t: t, s: s, net: mn}
	t.Cleanup(func() {
		for _, c := range l.clients {
			c.conn.Close()
		}
		conn.Close()
	})
	for i := range n {
		l.join(fmt.Sprintf("198.18.1.%d:4000", i+1))
	}
	return l
}

// join makes a client that subscribes to chat.git and offers itself.
func (l *fanLab) join(addr string) *fanClient {
	ap := netip.MustParseAddrPort(addr)
	conn, err := l.net.Listen(addr)
	if err != nil {
		l.t.Fatal(err)
	}
	c := &fanClient{testClient: newTestClient(l.s), addr: ap, conn: conn}
	go func() {
		pkts := []udpconn.Packet{{Buf: make([]byte, 2048)}}
		for {
			if _, err := conn.ReadBatch(pkts); err != nil {
				return
			}
			_, m, err := wire.Open(pkts[0].Buf, &c.shared)
			if err != nil {
				l.t.Errorf("client cannot open a datagram: %v", err)
				continue
			}
			c.mu.Lock()
			c.got = append(c.got, m)
			c.mu.Unlock()
		}
	}()
	l.clients = append(l.clients, c)
	pong := l.s.handle(0, 0, 0, c.keepalive(l.t, wire.Sub{RepoID: "chat.git"}), ap)
	if _, ok := c.open(l.t, pong).(*wire.Pong); !ok {
		l.t.Fatal("no pong")
	}
	l.flush()
	chal := c.take(func(m wire.Message) bool { _, ok := m.(*wire.Challenge); return ok })
	if len(chal) != 1 {
		l.t.Fatal("the rendezvous did not challenge a new address")
	}
	l.send(c, &wire.ChallengeReply{Cookie: chal[0].(*wire.Challenge).Cookie})
	l.flush()
	if len(c.take(func(m wire.Message) bool { _, ok := m.(*wire.Fanout); return ok })) != 1 {
		l.t.Fatal("the rendezvous did not offer fan-out once the address was shown")
	}
	l.send(c, &wire.PeerInfo{Flags: wire.PeerFlagParent})
	l.flush()
	return c
}

func (l *fanLab) send(c *fanClient, m wire.Message) []byte {
	b, err := wire.Seal(nil, m, c.pub, &c.shared)
	if err != nil {
		l.t.Fatal(err)
	}
	return l.s.handle(0, 0, 0, b, c.addr)
}

// flush runs the send loop once and lets the datagrams arrive.
func (l *fanLab) flush() {
	l.s.loadPoked()
	l.s.sendDue()
	synctest.Wait()
}

// take removes and returns what the client got that matches keep.
func (c *fanClient) take(keep func(wire.Message) bool) []wire.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out, rest []wire.Message
	for _, m := range c.got {
		if keep(m) {
			out = append(out, m)
		} else {
			rest = append(rest, m)
		}
	}
	c.got = rest
	return out
}

func forwards(c *fanClient) []*wire.Forward {
	var out []*wire.Forward
	for _, m := range c.take(func(m wire.Message) bool { _, ok := m.(*wire.Forward); return ok }) {
		out = append(out, m.(*wire.Forward))
	}
	return out
}

func edges(c *fanClient) []*wire.Edge {
	var out []*wire.Edge
	for _, m := range c.take(func(m wire.Message) bool { _, ok := m.(*wire.Edge); return ok }) {
		out = append(out, m.(*wire.Edge))
	}
	return out
}

func (l *fanLab) push() {
	l.t.Helper()
	if _, err := l.s.cfg.Store.Append("chat.git", []store.Update{{Old: oid(0), New: oid(1), Ref: "refs/heads/main"}}, time.Now()); err != nil {
		l.t.Fatal(err)
	}
	l.s.Poke("chat.git")
	l.flush()
}

func oid(i int) string { return fmt.Sprintf("%040x", i) }

// Seven clients with arity 2: two children of the rendezvous, four under
// them, one more below; each edge is told to both ends at once, with the
// other's key, credentials and the address the rendezvous sees.
func TestFanoutBuildsTreeAndTellsBothEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 7)
		trees := l.s.Trees()
		if len(trees) != 1 || trees[0].Size != 7 || trees[0].Height != 3 {
			t.Fatalf("trees %+v", trees)
		}
		byKey := map[wire.Key]*fanClient{}
		for _, c := range l.clients {
			byKey[c.pub] = c
		}
		parentOf := map[wire.Key]wire.Key{}
		childEdges := map[uint64]*wire.Edge{}
		for _, c := range l.clients {
			for _, e := range edges(c) {
				switch e.Role {
				case wire.RoleParent:
					parentOf[c.pub] = e.Peer
					if len(e.Candidates) == 0 || e.Candidates[0].Addr != byKey[e.Peer].addr {
						t.Errorf("the child is not told where its parent is: %+v", e.Candidates)
					}
				case wire.RoleChild:
					childEdges[e.ID] = e
				}
			}
		}
		if len(parentOf) != 5 || len(childEdges) != 5 {
			t.Fatalf("%d members told their parent, %d parents told a child; want 5 and 5", len(parentOf), len(childEdges))
		}
		for _, c := range l.clients {
			if p, ok := parentOf[c.pub]; ok {
				if p == c.pub {
					t.Fatal("a member is its own parent")
				}
			}
		}
	})
}

// One push: the rendezvous sends the signed event to its two children only.
// Members that ack in time (the tree delivered) cost it nothing more; a
// member whose ack is late gets the event directly after its deadline.
func TestFanoutSendsToKAndFallsBackAfterDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 7)
		for _, c := range l.clients {
			edges(c)
		}
		l.push()
		pub := ed25519.PublicKey(l.s.fan.signPub[:])
		direct := 0
		for _, c := range l.clients {
			for _, f := range forwards(c) {
				if f.Seq != 1 || !f.Verify(pub) {
					t.Fatalf("not the signed event: %+v", f)
				}
				direct++
				l.send(c, &wire.Ack{RepoID: "chat.git", Seq: 1})
			}
		}
		if direct != 2 {
			t.Fatalf("%d members got the event from the rendezvous, want the 2 it parents", direct)
		}
		// The members the tree serves wait outside the set that the send
		// loop scans on every wake.
		if n := len(l.s.pending.list); n != 0 {
			t.Fatalf("%d subscriptions pending after the direct children acked, want 0", n)
		}
		// Every other member but one acks as if its parent forwarded it.
		late := l.clients[6]
		for _, c := range l.clients[2:6] {
			l.send(c, &wire.Ack{RepoID: "chat.git", Seq: 1})
		}
		time.Sleep(treeDeadline(1) - time.Millisecond)
		l.flush()
		if n := len(forwards(late)); n != 0 {
			t.Fatalf("sent directly before the deadline: %d", n)
		}
		time.Sleep(treeDeadline(l.s.clients[late.pub].subs[0].node.depth))
		l.flush()
		if n := len(forwards(late)); n != 1 {
			t.Fatalf("the late member got %d direct sends after its deadline, want 1", n)
		}
		for _, c := range l.clients[:6] {
			if n := len(forwards(c)); n != 0 {
				t.Fatalf("a member that acked got %d more sends", n)
			}
		}
		if st := l.s.Stats(); st.DirectFallbacks != 1 {
			t.Fatalf("direct fallbacks %d, want 1", st.DirectFallbacks)
		}
	})
}

// A child that reports no path to its parent moves elsewhere, never back
// under that parent, and both ends of its new edge are told.
func TestFanoutMovesChildAfterFailedEdge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 7)
		var child *fanClient
		var e *wire.Edge
		for _, c := range l.clients {
			for _, m := range edges(c) {
				if m.Role == wire.RoleParent && child == nil {
					child, e = c, m
				}
			}
		}
		if child == nil {
			t.Fatal("no edge")
		}
		l.send(child, &wire.EdgeState{ID: e.ID, State: wire.EdgeFailed})
		l.flush()
		n := l.s.clients[child.pub].subs[0].node
		if n.parent != nil && n.parent.su.c.key == e.Peer {
			t.Fatal("moved back under the parent it could not reach")
		}
		if n.parent != nil {
			got := edges(child)
			if len(got) == 0 || got[len(got)-1].Role != wire.RoleParent || got[len(got)-1].Peer != n.parent.su.c.key {
				t.Fatalf("the moved child was not told its new parent: %+v", got)
			}
		}
		if st := l.s.Stats(); st.PunchFailed != 1 {
			t.Fatalf("punch failures %d", st.PunchFailed)
		}
		// A second failure: the rendezvous serves it directly, as a leaf.
		if n.edge == nil {
			t.Fatal("the moved child has no edge to fail")
		}
		l.send(child, &wire.EdgeState{ID: n.edge.id, State: wire.EdgeFailed})
		l.flush()
		if n.parent != nil || !n.leaf {
			t.Fatalf("after %d failed edges the child still hangs under a member (leaf %v)", maxFailedEdges, n.leaf)
		}
	})
}

// A member that answers nobody leaves the tree once its own direct sends
// have backed off, so its children stop waiting for it; they are re-linked.
func TestFanoutEvictsSilentParent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 7)
		root := l.clients[0]
		rn := l.s.clients[root.pub].subs[0].node
		if rn.parent != nil || len(rn.children) == 0 {
			t.Fatal("the first member should be a child of the rendezvous with children")
		}
		for _, c := range l.clients {
			edges(c)
		}
		l.push()
		// Everyone but the root acks; the root stays silent.
		for _, c := range l.clients[1:] {
			l.send(c, &wire.Ack{RepoID: "chat.git", Seq: 1})
		}
		for range 10 {
			time.Sleep(time.Second)
			l.flush()
		}
		if l.s.clients[root.pub].subs[0].node != nil {
			t.Fatal("a silent member is still in the tree")
		}
		if st := l.s.Stats(); st.TreeEvictions != 1 {
			t.Fatalf("evictions %d", st.TreeEvictions)
		}
		trees := l.s.Trees()
		if trees[0].Size != 6 {
			t.Fatalf("tree size %d after eviction, want 6", trees[0].Size)
		}
		// Its next keepalive puts it back.
		l.s.handle(0, 0, 0, root.keepalive(t, wire.Sub{RepoID: "chat.git", Known: true, LastSeq: 1}), root.addr)
		if l.s.clients[root.pub].subs[0].node == nil {
			t.Fatal("back after a keepalive, yet not in the tree")
		}
	})
}

// Without --fanout, nothing changes: no Fanout offer, Notify for everyone.
func TestNoFanoutNoOffer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := testServer(t, true)
		c := newTestClient(s)
		s.handle(0, 0, 0, c.keepalive(t, wire.Sub{RepoID: "chat.git"}), srcA)
		if len(s.notes) != 0 || s.fan != nil {
			t.Fatal("fan-out offered without --fanout")
		}
	})
}

// A member that restarted asks to rejoin: it gets the signing key again
// (a Fanout), and every edge it is an end of is made anew, told to both
// ends; the tree keeps its shape. A plain repeat of a PeerInfo changes
// nothing.
func TestFanoutRejoinRemakesTheMembersEdges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 7)
		for _, c := range l.clients {
			edges(c)
		}
		before := l.s.Trees()[0]
		// clients[0] is a child of the rendezvous with two children.
		restarted := l.clients[0]
		l.send(restarted, &wire.PeerInfo{Flags: wire.PeerFlagParent})
		l.flush()
		for _, c := range l.clients {
			if n := len(edges(c)); n != 0 {
				t.Fatalf("a repeated PeerInfo sent %d edges", n)
			}
		}
		l.send(restarted, &wire.PeerInfo{Flags: wire.PeerFlagParent | wire.PeerFlagRejoin})
		l.flush()
		if n := len(restarted.take(func(m wire.Message) bool { _, ok := m.(*wire.Fanout); return ok })); n != 1 {
			t.Fatalf("the rejoining member got %d Fanout offers, want 1", n)
		}
		var mine []*wire.Edge
		drops := 0
		for _, e := range edges(restarted) {
			if e.Role == wire.RoleDrop {
				drops++ // the old edges go first
			} else {
				mine = append(mine, e)
			}
		}
		if len(mine) != 2 || drops != 2 {
			t.Fatalf("the rejoining member was told %d new edges and %d drops, want its 2 children and 2 drops", len(mine), drops)
		}
		for _, e := range mine {
			if e.Role != wire.RoleChild {
				t.Fatalf("role %d, want child edges", e.Role)
			}
			var child *fanClient
			for _, c := range l.clients {
				if c.pub == e.Peer {
					child = c
				}
			}
			got := edges(child)
			var remade bool
			for _, ce := range got {
				remade = remade || (ce.ID == e.ID && ce.Role == wire.RoleParent && ce.Peer == restarted.pub)
			}
			if !remade {
				t.Fatalf("the child was not told the new edge: %+v", got)
			}
		}
		after := l.s.Trees()[0]
		if after.Size != before.Size || after.Height != before.Height {
			t.Fatalf("the tree changed shape: %d members height %d, was %d height %d", after.Size, after.Height, before.Size, before.Height)
		}
	})
}

// The stats say how many followers are behind the head, and when the last
// ack that moved one on came: what `make bench` reads as "all acked".
func TestStatsCountFollowersBehindAndTheLastAck(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 3)
		if st := l.s.Stats(); st.SubscriptionsBehind != 0 || st.LastAckUnixNano != 0 {
			t.Fatalf("before any event: %d behind, last ack at %d", st.SubscriptionsBehind, st.LastAckUnixNano)
		}
		l.push()
		if st := l.s.Stats(); st.SubscriptionsBehind != 3 {
			t.Fatalf("after a push: %d behind, want 3", st.SubscriptionsBehind)
		}
		for _, c := range l.clients[:2] {
			l.send(c, &wire.Ack{RepoID: "chat.git", Seq: 1})
		}
		time.Sleep(7 * time.Millisecond)
		last := time.Now()
		l.send(l.clients[2], &wire.Ack{RepoID: "chat.git", Seq: 1})
		time.Sleep(time.Millisecond)
		l.send(l.clients[2], &wire.Ack{RepoID: "chat.git", Seq: 1}) // a duplicate moves nothing
		if st := l.s.Stats(); st.SubscriptionsBehind != 0 || st.LastAckUnixNano != last.UnixNano() {
			t.Fatalf("after every ack: %d behind, last ack %v after the one that moved the last", st.SubscriptionsBehind, time.Unix(0, st.LastAckUnixNano).Sub(last))
		}
	})
}
