package punch

import (
	"net/netip"
	"slices"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Failover between the nodes of a clustered rendezvous. Every node shares
// one identity (keys) and every event (the stream), so a daemon can move to
// any of them with its position: the new node catches it up from there,
// exactly once. A node tells its daemons the cluster's nodes (Nodes, 0x17);
// a daemon whose node owes it an answer for nodeFailoverAfter moves to the
// next one.

// nodeFailoverAfter is how long a node may owe an answer before the daemon
// moves: the four keepalives of a retry round (at 0, 1, 3 and 7 s) all
// unanswered, as for turning to SSH (udpDeadAfter). With several nodes a
// daemon asks for a pong with every keepalive, so a node that dies is
// noticed within one keepalive interval and this.
const nodeFailoverAfter = udpDeadAfter

// onNodes takes a node's list of the cluster's nodes.
func (d *Daemon) onNodes(p *serverLink, m *wire.Nodes) {
	addrs := make([]netip.AddrPort, 0, len(m.Addrs))
	for _, a := range m.Addrs {
		addrs = append(addrs, netip.AddrPortFrom(a.Addr().Unmap(), a.Port()))
	}
	p.mu.Lock()
	changed := !slices.Equal(addrs, p.nodes)
	p.nodes = addrs
	p.mu.Unlock()
	if !changed {
		return
	}
	d.log.Info("cluster nodes", "server", p.key.String()[:16], "nodes", addrs)
	d.mu.Lock()
	if d.state.Nodes == nil {
		d.state.Nodes = map[string][]string{}
	}
	var list []string
	for _, a := range addrs {
		list = append(list, a.String())
	}
	d.state.Nodes[p.key.String()] = list
	d.saveLocked()
	d.mu.Unlock()
}

// savedNodes are the node addresses the state keeps for a server.
func (d *Daemon) savedNodes(key wire.Key) []netip.AddrPort {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []netip.AddrPort
	for _, s := range d.state.Nodes[key.String()] {
		if a, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// multiNode reports whether the link knows other nodes to move to. Called
// with p.mu held.
func (p *serverLink) multiNode() bool { return len(p.nodes) > 1 }

// failover moves the link to the next node in the list, in the primary
// path's family, when its node has owed an answer for nodeFailoverAfter.
// It reports whether it moved.
func (d *Daemon) failover(p *serverLink, silent time.Duration, now time.Time) bool {
	p.mu.Lock()
	u := p.primary
	if silent < nodeFailoverAfter || !p.multiNode() || u == nil || now.Sub(p.movedAt) < nodeFailoverAfter {
		p.mu.Unlock()
		return false
	}
	from := u.addr
	// The node after it in the list (its node unlisted: the first), in its
	// family.
	var next netip.AddrPort
	i := slices.Index(p.nodes, from)
	for j := 1; j <= len(p.nodes); j++ {
		if b := p.nodes[(i+j)%len(p.nodes)]; b != from && b.Addr().Is6() == from.Addr().Is6() {
			next = b
			break
		}
	}
	if !next.IsValid() {
		p.mu.Unlock()
		return false
	}
	srv := p.server()
	if srv.Addr == from || !srv.Alt.IsValid() {
		srv.Addr = next
	} else {
		srv.Alt = next
	}
	p.srv.Store(&srv)
	u.addr, u.validated = next, false
	p.owedSince, p.movedAt = now, now
	p.mu.Unlock()
	d.count(func(s *Stats) { s.NodeMoves++ })
	d.log.Warn("the rendezvous node does not answer: moving to another node of its cluster", "from", from, "to", next, "silent_for", silent.Round(time.Second))
	kick(u.ping) // a keepalive now: the new node learns where this daemon stands
	return true
}
