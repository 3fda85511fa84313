package punch

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// Paths. A daemon reaches a dual-stack rendezvous on each address family
// it has: a udpPath per family, each with its own keepalives, its own
// validated address, and its own learned keepalive interval (a home IPv6
// firewall's idle timeout is rarely the IPv4 NAT's). One of them is the
// primary: it carries the ordinary keepalives, which the rendezvous
// delivers on. The other carries standby keepalives (wire.Keepalive's
// Standby), which keep it open and proven at the rendezvous. When the
// primary stops answering while the other answers, they change roles at
// once; and the rendezvous retries an unacknowledged delivery on the other
// path by itself. IPv6 is preferred (docs/operations.md says why), and a
// daemon moved off it moves back once it has answered again for
// preferBack.

// preferBack is how long the preferred family's path must have answered
// again before it is primary again: a path that flaps costs at most one
// move a minute.
const preferBack = time.Minute

// udpPath is the daemon's UDP path to a rendezvous on one address family.
// Its fields, past the channels, are under the link's mu.
type udpPath struct {
	pong    chan struct{} // the last keepalive on it was answered
	ping    chan struct{} // a keepalive on it now
	probeOK chan struct{} // its probe ping arrived: the mapping survived

	addr netip.AddrPort // the rendezvous's address on this family
	v6   bool
	// probeCounter is the counter of the keepalive whose probe is pending.
	probeCounter uint64
	// sent holds the last keepalives sent on it, so that a pong that comes
	// after a retry went out still counts (a round trip longer than the
	// first retry's second, on a slow or loaded path, would otherwise
	// never match); next is where the next one goes.
	sent       [sentKept]sentKeepalive
	next       int
	interval   time.Duration
	lastSent   time.Time
	lastPong   time.Time
	lastPinged time.Time // when a ping last made us send a keepalive
	observed   netip.AddrPort
	validated  bool
	rechecking bool
	// answering says whether the last keepalive that wanted a pong on it
	// got one, and since when that has been so; unanswered, that one went
	// without; lostAt, when it last stopped answering after answering.
	answering, unanswered  bool
	answeringSince, lostAt time.Time
	// check asks for a pong with the next keepalive, whatever PongRefresh
	// says: something suggests the path may be dead.
	check bool
}

// sentKept is how many keepalives a path remembers: retries go out after
// 1, 2, 4 and 8 s, so a pong up to about 15 s late still counts.
const sentKept = 4

// sentKeepalive is what a pong is matched with.
type sentKeepalive struct {
	counter uint64
	standby bool     // a standby keepalive
	repos   []string // the repositories it named, in order
}

// remember records a keepalive sent on u. Called with the link's mu held.
func (u *udpPath) remember(k sentKeepalive) {
	u.sent[u.next] = k
	u.next = (u.next + 1) % sentKept
}

// matching finds the keepalive a pong answers. Called with the link's mu held.
func (u *udpPath) matching(counter uint64) (sentKeepalive, bool) {
	for _, k := range u.sent {
		if k.counter == counter && counter != 0 {
			return k, true
		}
	}
	return sentKeepalive{}, false
}

func newPath(addr netip.AddrPort) *udpPath {
	addr = udpconn.Unmap(addr)
	return &udpPath{addr: addr, v6: addr.Addr().Is6(), pong: make(chan struct{}, 1), ping: make(chan struct{}, 1), probeOK: make(chan struct{}, 1)}
}

// family names a path's address family in logs and status.
func (u *udpPath) family() string {
	if u.v6 {
		return "ipv6"
	}
	return "ipv4"
}

// serverAddrs is the server's addresses, the preferred first: IPv6, then
// IPv4, one of each at most.
func serverAddrs(s Server) []netip.AddrPort {
	var out []netip.AddrPort
	for _, a := range []netip.AddrPort{s.Addr, s.Alt} {
		if a.IsValid() {
			out = append(out, udpconn.Unmap(a))
		}
	}
	if len(out) == 2 && (out[0].Addr().Is6() == out[1].Addr().Is6()) {
		out = out[:1] // two of one family: the first is the one
	}
	if len(out) == 2 && !out[0].Addr().Is6() {
		out[0], out[1] = out[1], out[0]
	}
	return out
}

// setPaths makes the link's paths fit the server's addresses: a path per
// family, its address updated; a family the server no longer has keeps
// its path (its loops run until the daemon stops) but is never primary.
// It returns the paths it added. Called with p.mu held.
func (p *serverLink) setPaths(s Server) (added []*udpPath) {
	for _, a := range serverAddrs(s) {
		var found *udpPath
		for _, u := range p.paths {
			if u.v6 == a.Addr().Is6() {
				found = u
			}
		}
		if found != nil {
			found.addr = a
			continue
		}
		u := newPath(a)
		p.paths = append(p.paths, u)
		added = append(added, u)
	}
	if p.primary == nil {
		p.primary = p.paths[0]
	}
	return added
}

// pathAt is the path to the rendezvous at addr, or nil.
func (p *serverLink) pathAt(addr netip.AddrPort) *udpPath {
	addr = udpconn.Unmap(addr)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, u := range p.paths {
		if u.addr == addr {
			return u
		}
	}
	return nil
}

// first is the primary path.
func (p *serverLink) first() *udpPath {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.primary
}

// replyPath is where the daemon's other messages go: while a datagram
// from the rendezvous is handled, the path it came on (an ack goes back
// the way its event came, which tells the rendezvous that path works),
// else the primary.
func (p *serverLink) replyPath() *udpPath {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.heardOn != nil {
		return p.heardOn
	}
	return p.primary
}

// answered records whether a path answered a keepalive that wanted a pong,
// and re-chooses the primary. It reports the new primary when it changed.
func (d *Daemon) answered(p *serverLink, u *udpPath, ok bool) {
	now := time.Now()
	p.mu.Lock()
	if ok && !u.answering {
		u.answeringSince = now
	}
	if !ok && u.answering {
		u.lostAt = now
	}
	u.answering, u.unanswered = ok, !ok
	if ok {
		u.check = false
	}
	old := p.primary
	p.primary = choosePrimary(p.paths, old, now)
	moved := p.primary != old
	p.mu.Unlock()
	if moved {
		d.log.Info("rendezvous path changed", "server", p.server().Addr, "from", old.family(), "to", p.primary.family(), "via", p.primary.addr)
		kick(p.primary.ping) // its next keepalive, an ordinary one, moves the rendezvous too
	}
}

// choosePrimary keeps the primary while it answers or its first answer
// is still awaited, except that the preferred path (the first) takes over
// once it answers: at once if it never failed (it was slow to start, as
// IPv6 is while neighbour discovery runs), after preferBack if it did. A
// primary whose keepalive went unanswered gives way to a path that answers.
func choosePrimary(paths []*udpPath, cur *udpPath, now time.Time) *udpPath {
	pref := paths[0]
	if cur != pref && pref.answering && (pref.lostAt.IsZero() || now.Sub(pref.answeringSince) >= preferBack) {
		return pref
	}
	if cur.answering || !cur.unanswered {
		return cur
	}
	for _, u := range paths {
		if u != cur && u.answering {
			return u
		}
	}
	return cur
}

// heardStandby notes a delivery that came on a path that is not the
// primary: the rendezvous found the primary silent. The primary's next
// keepalive asks for a pong, so that a dead primary is known within its
// retries instead of PongRefresh.
func (d *Daemon) heardStandby(p *serverLink, u *udpPath) {
	p.mu.Lock()
	prim := p.primary
	p.mu.Unlock()
	if u != prim {
		p.checkPath(prim)
	}
}

// checkPath makes u's next keepalive, sent now, ask for a pong, unless
// one is being asked for already.
func (p *serverLink) checkPath(u *udpPath) {
	p.mu.Lock()
	kickIt := !u.check
	u.check = true
	p.mu.Unlock()
	if kickIt {
		kick(u.ping)
	}
}

// write sends a sealed datagram on a path.
func (d *Daemon) write(p *serverLink, u *udpPath, b []byte) {
	p.mu.Lock()
	u.lastSent = time.Now()
	addr := u.addr
	p.mu.Unlock()
	if err := udpconn.WriteTo(d.cfg.Conn, b, addr); err != nil {
		d.log.Debug("send failed", "server", addr, "err", err)
	}
}
