package rendezvous

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Peer-to-peer fan-out, the rendezvous's side. With --fanout K the followers
// of a repository that offer to take part (PeerInfo) form a tree (tree.go):
// the rendezvous sends each event, signed once, to at most K of them, and
// each forwards it to at most K more. Every client still acks the rendezvous
// itself; one whose ack is late gets the event directly (delivery.go), so a
// dead or hostile parent costs its subtree at most the tree deadline.

// Fan-out timing, with reasons.
const (
	// treeDeadlineBase and treeDeadlinePerHop bound how long the rendezvous
	// waits for a tree member's ack before sending to it directly: the
	// first send of a direct path already waits InitialRTO (250 ms) before
	// repeating, and each hop of the tree adds a path of its own (about one
	// Internet round trip, 100-150 ms, and a hop's own handling), so a
	// member at depth d gets 250 ms + d*150 ms. A member that acks on time
	// costs the rendezvous nothing but its ack.
	treeDeadlineBase   = 250 * time.Millisecond
	treeDeadlinePerHop = 150 * time.Millisecond
	// edgeRetry and edgeTries bound the repetition of an Edge that an end
	// has not taken: 1, 2, 4, 8 s, then the end is treated as gone (its
	// ack deadlines serve it directly meanwhile).
	edgeRetry = time.Second
	edgeTries = 5
	// maxFailedEdges: after this many edges on which no path formed, a
	// member is served by the rendezvous directly (as a leaf): its NAT and
	// its parents' evidently do not meet, and each try costs up to 15 s.
	maxFailedEdges = 2
	// evictAfterRTO takes a tree member out of the tree once its own direct
	// retransmission has backed off this far (two unanswered repeats): a
	// parent that answers nobody must not keep costing its subtree the
	// deadline on every event. Its next packet puts it back.
	evictAfterRTO = 4 * InitialRTO
)

// DefaultFanout is --fanout's default, chosen from measurements: the
// arity with the least rendezvous CPU per push at 100k simulated followers,
// and the widest whose tree delivered within its deadlines there
// (docs/operations.md).
const DefaultFanout = 3

// treeDeadline is how long a member at depth d may take to ack.
func treeDeadline(depth int) time.Duration {
	return treeDeadlineBase + time.Duration(depth)*treeDeadlinePerHop
}

// fanout is the server's fan-out state, nil when --fanout is 0.
type fanout struct {
	arity   int
	signer  ed25519.PrivateKey
	signPub [ed25519.PublicKeySize]byte
	edges   map[uint64]*edge
	// waiting holds the edges that an end has not taken yet, and resendAt
	// (unix nanoseconds; 0: none) is the earliest time one is due again:
	// the send loop runs on every datagram it is kicked for, and must not
	// walk every edge of every tree each time.
	waiting  map[uint64]*edge
	resendAt int64
	edgeSeq  uint64
}

// peerInfo is what a client offered in its PeerInfo.
type peerInfo struct {
	flags, mapping, filtering byte
	host                      []netip.AddrPort
}

// canParent reports whether a client may be given children: it offered to,
// and its NAT does not map per destination (a symmetric NAT's mapping to a
// child would differ from the one its candidates name).
func (p *peerInfo) canParent() bool {
	return p.flags&wire.PeerFlagParent != 0 && !p.mapsPerDestination()
}

func (p *peerInfo) mapsPerDestination() bool {
	return p.mapping == wire.AddressDependent || p.mapping == wire.AddressAndPortDependent
}

// sameSite says whether two members share a public address: behind one
// NAT, their host candidates reach each other directly.
func sameSite(a, b *tnode) bool { return a.su.c.addr.Addr() == b.su.c.addr.Addr() }

// canReach says whether child can hang under parent. A child whose NAT
// maps per destination reaches a parent only through a mapping the parent
// learns from the child's own checks (peer-reflexive): the parent's NAT must
// let those in, so it filters by address at most (RFC 4787; what ICE can do
// without a relay). Unknown behaviour is tried: a failed edge moves the child.
func canReach(parent, child *tnode) bool {
	if !child.su.c.peer.mapsPerDestination() || sameSite(parent, child) {
		return true
	}
	f := parent.su.c.peer.filtering
	return f != wire.AddressAndPortDependent
}

// edge is one parent-child link of a tree.
type edge struct {
	id            uint64
	child, parent *tnode
	ufrag, pwd    [2]string // ICE credentials: [0] the child's, [1] the parent's
	took          [2]bool   // the child, the parent reported taking it
	state         byte      // the last state reported (wire.Edge*)
	kind          byte      // the selected path's remote candidate kind
	rttMicro      uint32
	tries         int
	next          int64 // unix nanoseconds: send again if not taken
}

// iceChars is the ICE credential alphabet (RFC 8445 §15.4).
const iceChars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

func iceString(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	for i := range b {
		b[i] = iceChars[int(b[i])%len(iceChars)]
	}
	return string(b)
}

// onPeerInfo takes a client's offer and places its subscriptions in their
// repositories' trees. Called with mu held.
func (s *Server) onPeerInfo(c *client, m *wire.PeerInfo, now time.Time) {
	if s.fan == nil {
		s.stats.Unexpected++
		return
	}
	if isStream(c.addr) {
		return // a client over SSH stays a leaf
	}
	member := c.peer != nil
	c.peer = &peerInfo{flags: m.Flags, mapping: m.Mapping, filtering: m.Filtering, host: m.Host}
	if m.Flags&wire.PeerFlagRejoin != 0 {
		// A daemon that restarted while in trees: it needs the signing key
		// again, and every edge it was an end of, made anew.
		s.note(c, s.fanoutMsg())
		if member {
			s.rebound(c, now)
		}
	}
	for _, su := range c.subs {
		if su.node == nil {
			s.joinTree(su, now)
		}
	}
}

// joinTree places a subscription of a client that takes part.
func (s *Server) joinTree(su *sub, now time.Time) {
	r := su.r
	if su.filtered() {
		// A tree member gets every event (it forwards them); a client that
		// wants only some refs is served directly, so that the others
		// cost no datagram at all.
		return
	}
	if r.tree == nil {
		r.tree = newTree(s.fan.arity)
		r.tree.canReach = canReach
		r.tree.sameSite = sameSite
	}
	n, adopted := r.tree.insert(su, !su.c.peer.canParent())
	su.node = n
	s.stats.TreeJoins++
	if n.parent != nil {
		s.link(n, n.parent, now)
	}
	for _, a := range adopted {
		s.relink(a, now)
	}
}

// leaveTree takes a subscription out of its tree and links the members that
// move to their new parents. Called with mu held.
func (s *Server) leaveTree(su *sub, now time.Time) {
	n := su.node
	if n == nil {
		return
	}
	if n.edge != nil {
		s.unlink(n.edge)
	}
	for _, c := range n.children {
		if c.edge != nil {
			s.unlink(c.edge)
		}
	}
	moved := su.r.tree.remove(n)
	su.node = nil
	if su.treeWait != 0 {
		// Out of the tree, it is the rendezvous's to serve.
		s.stopTreeWait(su)
		if su.acked < su.r.head {
			s.pending.add(su)
			s.kickSender()
		}
	}
	for _, c := range moved {
		s.relink(c, now)
	}
}

// relink gives a member that moved an edge to its new parent (none when
// the rendezvous took it).
func (s *Server) relink(n *tnode, now time.Time) {
	if n.edge != nil {
		s.unlink(n.edge)
	}
	if n.parent != nil {
		s.link(n, n.parent, now)
	}
}

// rebound re-links a client whose address changed: each edge it is an end
// of is made again, naming its new address.
func (s *Server) rebound(c *client, now time.Time) {
	for _, su := range c.subs {
		n := su.node
		if n == nil {
			continue
		}
		s.relink(n, now)
		for _, ch := range n.children {
			s.relink(ch, now)
		}
	}
}

// link makes the edge between child and parent and tells both ends.
func (s *Server) link(child, parent *tnode, now time.Time) {
	f := s.fan
	f.edgeSeq++
	e := &edge{id: f.edgeSeq, child: child, parent: parent,
		ufrag: [2]string{iceString(8), iceString(8)}, pwd: [2]string{iceString(24), iceString(24)}}
	f.edges[e.id] = e
	child.edge = e
	s.stats.Edges++
	s.sendEdge(e, now)
}

// sendEdge tells each end of e that has not taken it about the other.
func (s *Server) sendEdge(e *edge, now time.Time) {
	repoID := e.child.su.r.id
	for end := range 2 {
		if e.took[end] {
			continue
		}
		me, peer, role := e.child, e.parent, wire.RoleParent
		if end == 1 {
			me, peer, role = e.parent, e.child, wire.RoleChild
		}
		m := &wire.Edge{ID: e.id, Role: role, RepoID: repoID, Peer: peer.su.c.key,
			LocalUfrag: e.ufrag[end], LocalPwd: e.pwd[end], RemoteUfrag: e.ufrag[1-end], RemotePwd: e.pwd[1-end],
			Candidates: candidates(peer.su.c)}
		s.note(me.su.c, m)
	}
	e.tries++
	e.next = now.Add(edgeRetry << (e.tries - 1)).UnixNano()
	s.fan.waiting[e.id] = e
	if s.fan.resendAt == 0 || e.next < s.fan.resendAt {
		s.fan.resendAt = e.next
	}
}

// candidates are the addresses a client may be reached at: the one the
// rendezvous sees (reflexive, or host when it is one of the client's own),
// then the host addresses it reported.
func candidates(c *client) []wire.Candidate {
	out := []wire.Candidate{{Kind: wire.CandSrflx, Addr: c.addr}}
	for _, h := range c.peer.host {
		if h == c.addr {
			out[0].Kind = wire.CandHost
			continue
		}
		if len(out) < wire.MaxCandidates {
			out = append(out, wire.Candidate{Kind: wire.CandHost, Addr: h})
		}
	}
	return out
}

// unlink ends an edge and tells each end that is still in its tree.
func (s *Server) unlink(e *edge) {
	delete(s.fan.edges, e.id)
	delete(s.fan.waiting, e.id)
	if e.child.edge == e {
		e.child.edge = nil
	}
	ends := [2]*tnode{e.child, e.parent}
	for i, n := range ends {
		other := ends[1-i]
		if n.su == nil || other.su == nil {
			continue // gone: nobody to tell, or nothing to name
		}
		s.note(n.su.c, &wire.Edge{ID: e.id, Role: wire.RoleDrop, RepoID: n.su.r.id, Peer: other.su.c.key})
	}
}

// onEdgeState takes an end's report on an edge. A failed edge moves the
// child elsewhere, never back under the same parent. Called with mu held.
func (s *Server) onEdgeState(c *client, m *wire.EdgeState, now time.Time) {
	if s.fan == nil {
		s.stats.Unexpected++
		return
	}
	e := s.fan.edges[m.ID]
	if e == nil || e.child.su == nil || e.parent.su == nil {
		return // an edge already gone: a late report
	}
	end := -1
	switch c {
	case e.child.su.c:
		end = 0
	case e.parent.su.c:
		end = 1
	default:
		s.stats.Unexpected++ // not an end of this edge
		return
	}
	e.took[end] = true
	if e.took[0] && e.took[1] {
		delete(s.fan.waiting, e.id)
	}
	switch m.State {
	case wire.EdgeConnected:
		if e.state != wire.EdgeConnected {
			s.stats.Count(m.PathKind)
		}
		e.state, e.kind, e.rttMicro = m.State, m.PathKind, m.RTTMicro
	case wire.EdgeFailed:
		s.stats.PunchFailed++
		n := e.child
		s.unlink(e)
		if n.failed++; n.failed >= maxFailedEdges {
			n.su.r.tree.serveDirectly(n)
			for _, c := range n.children {
				s.relink(c, now)
			}
		} else {
			n.su.r.tree.move(n)
		}
		s.relink(n, now)
	case wire.EdgeChecking:
		if e.state == 0 {
			e.state = m.State
		}
	}
}

// resendEdges repeats the Edges that an end has not taken; after edgeTries
// it gives up on them (each end's deadlines serve it directly meanwhile).
// It returns when one is next due (zero: none). Called with mu held.
func (s *Server) resendEdges(now time.Time) (next time.Time) {
	f := s.fan
	if f.resendAt == 0 {
		return time.Time{}
	}
	if now.UnixNano() < f.resendAt {
		return time.Unix(0, f.resendAt)
	}
	f.resendAt = 0
	for id, e := range f.waiting {
		switch {
		case e.took[0] && e.took[1], e.tries >= edgeTries:
			delete(f.waiting, id)
		case now.UnixNano() < e.next:
			if f.resendAt == 0 || e.next < f.resendAt {
				f.resendAt = e.next
			}
		default:
			s.sendEdge(e, now) // sets resendAt
		}
	}
	if f.resendAt == 0 {
		return time.Time{}
	}
	return time.Unix(0, f.resendAt)
}

// note queues a control message to a client; the send loop seals and sends
// it. Nothing goes to an address the client has not shown it receives at:
// an Edge is repeated, and the Fanout offered again, once it has.
func (s *Server) note(c *client, m wire.Message) {
	if c.proven != c.addr {
		return
	}
	s.noteTo(c, c.conn, c.addr, m)
}

// noteTo queues a control message to one of a client's addresses.
func (s *Server) noteTo(c *client, conn udpconn.Conn, to netip.AddrPort, m wire.Message) {
	s.notes = append(s.notes, job{conn: conn, to: to, c: c, msg: m})
	s.kickSender()
}

// fanoutMsg is the Fanout message this rendezvous sends to clients.
func (s *Server) fanoutMsg() *wire.Fanout {
	return &wire.Fanout{SigningKey: s.fan.signPub, Arity: byte(s.fan.arity)}
}

// TreeMember is one row of `gcn-punch status --store DIR --tree`.
type TreeMember struct {
	Client   string `json:"client"`
	Parent   string `json:"parent"` // "rendezvous" for its own children
	Depth    int    `json:"depth"`
	Children int    `json:"children"`
	Leaf     bool   `json:"leaf"`
	Edge     string `json:"edge,omitempty"` // checking|connected|failed, "" before a report
	Path     string `json:"path,omitempty"` // host|srflx|prflx|relay
	RTTMicro uint32 `json:"rtt_us,omitempty"`
}

// RepoTree is one repository's tree as it stands.
type RepoTree struct {
	Repo    string       `json:"repo"`
	Arity   int          `json:"arity"`
	Size    int          `json:"members"`
	Height  int          `json:"height"`
	Members []TreeMember `json:"tree"`
}

var edgeStateNames = map[byte]string{wire.EdgeChecking: "checking", wire.EdgeConnected: "connected", wire.EdgeFailed: "failed"}

// Trees reports every repository's tree.
func (s *Server) Trees() []RepoTree {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []RepoTree{}
	for _, r := range s.repos {
		if r.tree == nil {
			continue
		}
		rt := RepoTree{Repo: r.id, Arity: r.tree.arity, Size: r.tree.size, Height: r.tree.height(), Members: []TreeMember{}}
		r.tree.walk(func(n *tnode) {
			m := TreeMember{Client: n.su.c.key.String(), Parent: "rendezvous", Depth: n.depth, Children: len(n.children), Leaf: n.leaf}
			if n.parent != nil {
				m.Parent = n.parent.su.c.key.String()
			}
			if e := n.edge; e != nil {
				m.Edge, m.Path, m.RTTMicro = edgeStateNames[e.state], wire.CandidateKindName(e.kind), e.rttMicro
			}
			rt.Members = append(rt.Members, m)
		})
		out = append(out, rt)
	}
	return out
}
