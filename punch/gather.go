package punch

import (
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Gathered acks, the daemon's side (wire/gather.go). On an edge the
// rendezvous marked EdgeGather, the child seals its ack to the rendezvous
// as ever and hands it to its parent (RelayAck); the parent passes its
// children's acks on together (Acks), one datagram where there were
// several. The parent cannot read, alter or invent an ack. If it drops
// one, the rendezvous sends the event to the child directly at the tree
// deadline, and the child acks that copy directly.

// gatherWait is how long a parent holds its children's acks for the rest
// of them: on a push, siblings ack within a few milliseconds of each other
// (the parent forwarded to all of them at once), so the batch usually goes
// as soon as the last one arrives; a child that does not ack (gone, or
// its copy lost) holds the others' back by this at most, a small part of
// the 250 ms the rendezvous allows before it sends to them itself.
const gatherWait = 20 * time.Millisecond

// gathering is a parent's children's acks waiting to go to one rendezvous.
type gathering struct {
	acks  map[wire.Key][]byte // each child's latest sealed ack (acks are cumulative)
	timer *time.Timer         // flushes after gatherWait; nil when none waits
}

// relayAck hands this daemon's ack to its parent on edge e, sealed to the
// rendezvous. It reports whether it went; if not, the caller acks directly.
func (d *Daemon) relayAck(p *serverLink, e *peerEdge, m *wire.Ack) bool {
	d.edgesMu.Lock()
	addr, live := e.addr, d.edges[e.id] == e
	d.edgesMu.Unlock()
	if !live || !addr.IsValid() {
		return false
	}
	inner, err := wire.Seal(nil, m, d.pub, &p.shared)
	if err != nil {
		return false
	}
	outer, err := wire.Seal(nil, &wire.RelayAck{Datagram: inner}, d.pub, &e.shared)
	if err != nil || udpconn.WriteTo(d.cfg.Conn, outer, addr) != nil {
		return false
	}
	d.count(func(s *Stats) { s.AcksRelayed++ })
	return true
}

// onRelayAck takes a child's ack for the rendezvous, from sender, which
// must be a child on an edge marked EdgeGather, and the ack's own sender.
func (d *Daemon) onRelayAck(sender wire.Key, m *wire.RelayAck) {
	if m.Sender() != sender {
		d.count(func(s *Stats) { s.Forged++ }) // another's ack: not this child's to hand over
		return
	}
	d.edgesMu.Lock()
	var p *serverLink
	for _, e := range d.edges {
		if e.peer == sender && e.role == wire.RoleChild && e.gather && e.addr.IsValid() {
			p = e.link
			break
		}
	}
	if p == nil {
		d.edgesMu.Unlock()
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	g := d.gathers[p]
	if g == nil {
		g = &gathering{acks: map[wire.Key][]byte{}}
		d.gathers[p] = g
	}
	g.acks[sender] = m.Datagram
	all := true
	for _, e := range d.edges {
		if e.link == p && e.role == wire.RoleChild && e.gather && e.addr.IsValid() && g.acks[e.peer] == nil {
			all = false
			break
		}
	}
	var out [][]byte
	switch {
	case all:
		out = d.takeGatheredLocked(p, g)
	case g.timer == nil:
		g.timer = time.AfterFunc(gatherWait, func() {
			d.edgesMu.Lock()
			var out [][]byte
			if d.gathers[p] == g {
				out = d.takeGatheredLocked(p, g)
			}
			d.edgesMu.Unlock()
			d.sendGathered(p, out)
		})
	}
	d.edgesMu.Unlock()
	d.sendGathered(p, out)
}

// takeGatheredLocked empties g, stopping its timer. Called with edgesMu held.
func (d *Daemon) takeGatheredLocked(p *serverLink, g *gathering) [][]byte {
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	out := make([][]byte, 0, len(g.acks))
	for _, a := range g.acks {
		out = append(out, a)
	}
	clear(g.acks)
	return out
}

// sendGathered sends gathered acks to the rendezvous, as many to an Acks
// as fit.
func (d *Daemon) sendGathered(p *serverLink, acks [][]byte) {
	if d.gatherHook != nil && len(acks) > 0 {
		acks = d.gatherHook(acks) // tests only: a hostile parent
	}
	var m wire.Acks
	for _, a := range acks {
		if !m.Fits(a) {
			d.send(p, &m)
			m = wire.Acks{}
		}
		m.Datagrams = append(m.Datagrams, a)
	}
	if len(m.Datagrams) > 0 {
		d.send(p, &m)
		d.count(func(s *Stats) { s.AcksGathered += uint64(len(acks)) })
	}
}

// stopGathering stops the waits at stop. The socket is closed by then, so
// the acks held are dropped: the rendezvous's tree deadline serves those
// children, as it would serve them after any parent's crash.
func (d *Daemon) stopGathering() {
	d.edgesMu.Lock()
	for p, g := range d.gathers {
		d.takeGatheredLocked(p, g)
	}
	clear(d.gathers)
	d.edgesMu.Unlock()
}
