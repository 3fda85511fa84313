package bench

import (
	"bytes"
	"crypto/ed25519"
	"sync"
	"syscall"

	"github.com/gitchat/gcn-punch/wire"
)

// Simulated fan-out: with LoadgenOptions.Peer, each simulated client takes
// part in the rendezvous's trees as a daemon does. It answers the Fanout
// offer with a PeerInfo, takes the Edges it is given, and forwards each
// signed event it accepts to its children, sealed to each, before acking the
// rendezvous itself. The real daemon runs ICE checks on an edge first; the
// simulated clients all sit on loopback, where the path named by the
// rendezvous is the one ICE would select, so they report it connected at
// once (the check's cost is measured in the NAT lab, not here).

// simPeer is a simulated client's side of its trees. Only the worker that
// serves the client's socket touches it.
type simPeer struct {
	parent   *simEdge
	children []*simEdge
}

// simEdge is one end of a tree edge: the peer's key, the box key shared
// with it, and where to send to it.
type simEdge struct {
	id     uint64
	key    wire.Key
	shared [32]byte
	to     syscall.SockaddrInet4
}

// sigCache verifies each distinct signed event once per process. A real
// daemon verifies on its own machine; the simulated clients share two cores
// with the rendezvous, and 100k Ed25519 verifications there (about 5 s of
// CPU) would measure the generator, not the fan-out. Each client still
// checks that what it got is byte for byte what was verified.
type sigCache struct {
	mu  sync.Mutex
	key ed25519.PublicKey
	ok  map[[wire.SigLen]byte][]byte // signature → the signed bytes it verified
}

func (sc *sigCache) setKey(k [ed25519.PublicKeySize]byte) {
	sc.mu.Lock()
	if sc.key == nil {
		sc.key = ed25519.PublicKey(k[:])
	}
	sc.mu.Unlock()
}

// verify reports whether f carries the server's signature; scratch is the
// caller's buffer for the signed bytes.
func (sc *sigCache) verify(f *wire.Forward, scratch []byte) bool {
	signed := f.AppendSigned(scratch[:0])
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.key == nil {
		return false
	}
	if b, ok := sc.ok[f.Sig]; ok {
		return bytes.Equal(b, signed)
	}
	if !ed25519.Verify(sc.key, signed, f.Sig[:]) {
		return false
	}
	if sc.ok == nil {
		sc.ok = map[[wire.SigLen]byte][]byte{}
	}
	sc.ok[f.Sig] = bytes.Clone(signed)
	return true
}

// sendToServer seals m from c to the rendezvous and sends it.
func (w *worker) sendToServer(c *simClient, m wire.Message) {
	if b, err := w.sealer.Seal(w.pkt[:0], m, c.pub, &c.shared); err == nil {
		syscall.Sendto(c.fd, b, 0, &w.dst)
	}
}

// onFanout offers to take part, as a daemon on an open network would: it
// may parent, and its "NAT" neither maps nor filters per destination.
func (w *worker) onFanout(c *simClient, m *wire.Fanout) {
	if c.peer == nil {
		return // not simulating peers: an old daemon drops the offer
	}
	w.g.sigs.setKey(m.SigningKey)
	w.sendToServer(c, &wire.PeerInfo{Flags: wire.PeerFlagParent, Mapping: wire.EndpointIndependent, Filtering: wire.EndpointIndependent})
}

// onEdge takes an edge and reports its path formed on the first candidate.
func (w *worker) onEdge(c *simClient, m *wire.Edge) {
	p := c.peer
	if p == nil {
		return
	}
	state := wire.EdgeConnected
	var kind byte
	switch m.Role {
	case wire.RoleDrop:
		state = wire.EdgeDropped
		if p.parent != nil && p.parent.id == m.ID {
			p.parent = nil
		}
		for i, e := range p.children {
			if e.id == m.ID {
				p.children = append(p.children[:i], p.children[i+1:]...)
				break
			}
		}
	default:
		if len(m.Candidates) == 0 || !m.Candidates[0].Addr.Addr().Is4() {
			state = wire.EdgeFailed
			break
		}
		cand := m.Candidates[0]
		kind = cand.Kind
		e := &simEdge{id: m.ID, key: m.Peer, shared: wire.SharedKey(m.Peer, c.priv),
			to: syscall.SockaddrInet4{Port: int(cand.Addr.Port()), Addr: cand.Addr.Addr().As4()}}
		if m.Role == wire.RoleParent {
			p.parent = e
		} else if !p.hasChild(m.ID) { // an Edge repeated: taken once
			p.children = append(p.children, e)
		}
		c.linked.Store(true)
		w.noteRegistered(c)
	}
	w.sendToServer(c, &wire.EdgeState{ID: m.ID, State: state, PathKind: kind})
}

func (p *simPeer) hasChild(id uint64) bool {
	for _, e := range p.children {
		if e.id == id {
			return true
		}
	}
	return false
}

// onForward takes a signed event, from the rendezvous or the parent: a new
// one goes to every child first, then the rendezvous gets the ack. It
// reports whether the event was the server's.
func (w *worker) onForward(c *simClient, m *wire.Forward) bool {
	if !w.g.sigs.verify(m, w.signed) {
		w.g.forged.Add(1)
		return false
	}
	if m.Seq > c.lastSeq.Load() {
		c.lastSeq.Store(m.Seq)
		for _, e := range c.peer.children {
			if b, err := w.sealer.Seal(w.fwd[:0], m, c.pub, &e.shared); err == nil {
				syscall.Sendto(c.fd, b, 0, &e.to)
			}
		}
	}
	w.ack(c, m.RepoID)
	return true
}

// fromParent reports whether a datagram's sender is c's parent, and the box
// key to open it with.
func (c *simClient) fromParent(sender wire.Key) (*[32]byte, bool) {
	if c.peer == nil || c.peer.parent == nil || c.peer.parent.key != sender {
		return nil, false
	}
	return &c.peer.parent.shared, true
}
