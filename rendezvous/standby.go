package rendezvous

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Two paths for a dual-stack client. A daemon that reaches the rendezvous
// over IPv4 and IPv6 keeps a path on each: its ordinary keepalives on the
// one it prefers, which the rendezvous delivers on (the client's addr),
// and standby keepalives (types 0x11 and 0x12) on the other, which the
// rendezvous keeps as the client's standby path. The standby address is
// proven like the first (Challenge, ChallengeReply), probed for its own
// idle timeout, and kept live by its own packets. When a delivery on the
// first path goes unacknowledged for a retransmission timeout, the
// retransmission goes down the standby path instead (the two swap), and an
// ack that arrives on the standby path makes it the first: the rendezvous
// delivers on the path that most recently confirmed that it works. Events
// carry their sequence numbers on either path, so a swap neither loses nor
// doubles one.

// standbyFresh is how recently a standby path must have been heard from to
// be worth a retransmission: the longest keepalive interval a daemon uses
// (120 s, its standby path's too), plus 30 s for a lost keepalive's
// retries. A path silent longer is likely closed by its NAT or firewall.
const standbyFresh = 150 * time.Second

// standbyPath is a client's path on its other address family.
type standbyPath struct {
	addr, proven netip.AddrPort
	conn         udpconn.Conn
	lastSeen     int64  // unix ns of its last packet from proven
	counter      uint64 // of the last standby keepalive: replays are dropped
	swappedAt    int64  // unix ns of the last swap
}

// is6 says whether an address is IPv6 (IPv4-mapped addresses are IPv4).
func is6(a netip.AddrPort) bool { return !a.Addr().Unmap().Is4() }

// lastHeard is the client's last sign of life on either path, unix ns.
func (c *client) lastHeard() int64 {
	if c.standby != nil {
		return max(c.lastSeen, c.standby.lastSeen)
	}
	return c.lastSeen
}

// standbyUsable says whether the standby path is proven and fresh, and
// the paths did not just swap: a client's several subscriptions expiring
// together must not swap them back and forth.
func (c *client) standbyUsable(now time.Time) bool {
	sb := c.standby
	return sb != nil && sb.proven == sb.addr && sb.addr.IsValid() && since(now, sb.lastSeen) < standbyFresh &&
		since(now, sb.swappedAt) >= InitialRTO
}

// swapPaths makes the standby path the first and the first the standby.
// Called with mu held.
func (s *Server) swapPaths(c *client, now time.Time, why string) {
	sb := c.standby
	c.addr, sb.addr = sb.addr, c.addr
	c.conn, sb.conn = sb.conn, c.conn
	c.proven, sb.proven = sb.proven, c.proven
	c.lastSeen, sb.lastSeen = sb.lastSeen, c.lastSeen
	c.pathSince = now.UnixNano()
	sb.swappedAt = now.UnixNano()
	s.stats.PathSwaps++
	s.log.Info("client path changed to its other address family", "client", c.key.String()[:16], "to", c.addr, "why", why)
	if c.proven == c.addr {
		s.queueRecord(c, now)
		if c.peer != nil && s.fan != nil {
			s.rebound(c, now) // its tree neighbours need the address it now uses
		}
	}
}

// keepFirstAsStandby keeps a client's first path as its standby when its
// ordinary keepalives move to the other address family: the daemon's own
// failover. Called with mu held.
func (c *client) keepFirstAsStandby() {
	if c.standby == nil {
		c.standby = &standbyPath{}
	}
	sb := c.standby
	sb.addr, sb.conn, sb.proven, sb.lastSeen = c.addr, c.conn, c.proven, c.lastSeen
}

// onStandbyKeepalive takes a standby keepalive from a known client: it
// keeps, moves or proves the standby path and answers with a Pong whose
// statuses say where the client stands, moving nothing. Called with mu
// held.
func (s *Server) onStandbyKeepalive(conn udpconn.Conn, c *client, m *wire.Keepalive, src netip.AddrPort, reqLen int, now time.Time) []byte {
	if isStream(src) {
		s.stats.Unexpected++ // a stream has one path
		return nil
	}
	sb := c.standby
	if sb == nil {
		sb = &standbyPath{}
		c.standby = sb
	}
	if m.Counter <= sb.counter {
		s.stats.Replayed++
		return nil
	}
	sb.counter = m.Counter
	s.stats.StandbyKeepalives++
	news := !m.Quiet || m.ProbeMillis > 0
	// The path it keeps: the standby, or, when the rendezvous itself
	// moved deliveries to it (a swap the daemon has not followed yet), the
	// first.
	proven, seen := &sb.proven, &sb.lastSeen
	if src == c.addr {
		proven, seen = &c.proven, &c.lastSeen
	} else if sb.addr != src {
		if sb.addr.IsValid() {
			s.log.Info("client standby address changed", "client", c.key.String()[:16], "from", sb.addr, "to", src)
		}
		sb.addr, sb.conn = src, conn
		news = true
	}
	if *proven == src {
		*seen = now.UnixNano()
	} else {
		news = true // the Challenge must go
	}
	fam := is6(src)
	if m.ProbeMillis > 0 {
		s.probes[probeKey{c, fam}] = probe{after: min(time.Duration(m.ProbeMillis)*time.Millisecond, MaxProbe), counter: m.Counter}
		s.kickSender()
	} else {
		delete(s.probes, probeKey{c, fam})
	}
	if !news {
		s.stats.Quiet++
		return nil
	}
	statuses := s.statuses[:len(m.Subs)]
	for i, named := range m.Subs {
		statuses[i] = wire.SubStatus{Status: wire.StatusNotAuthorised}
		if su := c.sub(named.RepoID); su != nil {
			statuses[i] = wire.SubStatus{Status: wire.StatusOK, Position: su.acked}
		}
	}
	pong := s.seal(&wire.Pong{Counter: m.Counter, Observed: src, Statuses: statuses}, c.key, &c.shared, reqLen)
	if *proven != src {
		s.challengeOn(c, conn, src, reqLen-len(pong), now)
	}
	return pong
}

// onStandbyProven takes a ChallengeReply from the standby address. Called
// with mu held.
func (s *Server) onStandbyProven(c *client, src netip.AddrPort, now time.Time) {
	sb := c.standby
	sb.proven = src
	sb.lastSeen = now.UnixNano()
	s.stats.Validated++
	s.noteTo(c, sb.conn, src, &wire.Validated{})
}

// connFor is the main socket that reaches addr: the second family's when
// the rendezvous listens on one address in each and addr is of that one.
func (s *Server) connFor(addr netip.AddrPort) udpconn.Conn {
	for _, g := range s.grids[1:] {
		if g[0][0] != nil && is6(g[0][0].LocalAddrPort()) == is6(addr) {
			return g[0][0]
		}
	}
	return s.grids[0][0][0]
}

// pathFor is the client's path (socket and address) on one address family,
// if it has one there.
func (c *client) pathFor(v6 bool) (conn udpconn.Conn, addr, proven netip.AddrPort, lastSeen int64, ok bool) {
	if c.addr.IsValid() && !isStream(c.addr) && is6(c.addr) == v6 {
		return c.conn, c.addr, c.proven, c.lastSeen, true
	}
	if sb := c.standby; sb != nil && sb.addr.IsValid() && is6(sb.addr) == v6 {
		return sb.conn, sb.addr, sb.proven, sb.lastSeen, true
	}
	return nil, netip.AddrPort{}, netip.AddrPort{}, 0, false
}
