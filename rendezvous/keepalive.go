package rendezvous

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// client is one live client. It is kept small (216 bytes): the rendezvous
// holds one per registered client, 100k of them in the benchmark.
type client struct {
	key      wire.Key
	shared   [32]byte
	addr     netip.AddrPort
	conn     udpconn.Conn // the socket the client talks to
	lastSeen int64        // unix nanoseconds of its last authenticated packet
	counter  uint64
	written  int64     // unix nanoseconds: when its record was last written
	subs     []*sub    // at most wire.MaxSubs: a slice is smaller than a map
	peer     *peerInfo // its fan-out offer; nil: served directly (Notify)
	// proven is the address the client showed it receives at (it answered
	// a Challenge sent there). Nothing larger than what arrived from addr
	// goes to addr until proven equals it (validate.go).
	proven netip.AddrPort
	// pathSince is when it came to its kind of path (udp or ssh), unix ns.
	pathSince int64
	// standby is a dual-stack client's path on its other address family
	// (standby.go); nil for most clients, so that they pay 8 bytes for it.
	standby *standbyPath
	// prefs are what its Subscribe asked for (subscribe.go); nil for a
	// daemon that sent none.
	prefs *prefs
}

// since is how long before now the unix-nanosecond time t was.
func since(now time.Time, t int64) time.Duration { return time.Duration(now.UnixNano() - t) }

// probe is a pending lifetime probe: ping with counter once the client has
// been silent for after.
type probe struct {
	after   time.Duration
	counter uint64
}

// probeKey names a pending probe: a client's path on one address family.
type probeKey struct {
	c  *client
	v6 bool
}

// namedOK reports whether a keepalive's subscription to repoID was accepted.
func namedOK(subs []wire.Sub, statuses []wire.SubStatus, repoID string) bool {
	for i, sb := range subs {
		if sb.RepoID == repoID && statuses[i].Status == wire.StatusOK {
			return true
		}
	}
	return false
}

// dropSub ends a subscription (its client's list is the caller's to
// update), and forgets a repository that nobody follows and that has no
// events in memory. Called with mu held.
func (s *Server) dropSub(su *sub, now time.Time) {
	s.leaveTree(su, now)
	su.r.subs.remove(su)
	s.pending.remove(su)
	if r := su.r; len(r.subs.list) == 0 && r.head == 0 {
		delete(s.repos, r.id)
	}
}

// sub finds the client's subscription to a repository.
func (c *client) sub(repoID string) *sub {
	for _, su := range c.subs {
		if su.r.id == repoID {
			return su
		}
	}
	return nil
}

func (s *Server) onKeepalive(conn udpconn.Conn, c *client, key wire.Key, shared [32]byte, m *wire.Keepalive, src netip.AddrPort, reqLen int, now time.Time) []byte {
	if m.Standby && c != nil {
		return s.onStandbyKeepalive(conn, c, m, src, reqLen, now)
	}
	// A standby keepalive from a client not known (yet, or since a
	// restart) is taken as an ordinary one: its path is the one there is.
	if c != nil && m.Counter <= c.counter {
		s.stats.Replayed++ // a replayed keepalive must never move the client's address
		return nil
	}
	statuses := s.statuses[:len(m.Subs)]
	clear(statuses)
	allowed := 0
	for i, sb := range m.Subs {
		if !s.authorised(c, sb.RepoID, key, now) {
			statuses[i] = wire.SubStatus{Status: wire.StatusNotAuthorised}
			continue
		}
		allowed++
	}
	if allowed == 0 && c == nil {
		// Not registered for anything: keep no state, answer with the
		// (smaller) pong so the daemon can log why.
		s.stats.Denied++
		return s.seal(&wire.Pong{Counter: m.Counter, Observed: src, Statuses: statuses}, key, &shared, reqLen)
	}
	s.stats.Keepalives++
	// A quiet keepalive is answered only with news for the client.
	news := !m.Quiet || m.ProbeMillis > 0 || allowed < len(m.Subs) || s.nodesNews(c)
	if c == nil {
		news = true
		c = &client{key: key, shared: shared, addr: src, conn: conn, pathSince: now.UnixNano()}
		s.clients[key] = c
		s.log.Info("client up", "client", key.String()[:16], "addr", src)
	} else if sb := c.standby; c.addr != src && sb != nil && sb.addr == src {
		// The daemon moved its ordinary keepalives to its standby path.
		s.swapPaths(c, now, "the client's keepalives moved")
		news = true
	} else if c.addr != src {
		s.stats.Rebinds++
		news = true
		if !isStream(src) && !isStream(c.addr) && is6(src) != is6(c.addr) {
			// To the other address family: the path it leaves stays as
			// its standby, which its standby keepalives will keep.
			c.keepFirstAsStandby()
			c.pathSince = now.UnixNano()
			s.log.Info("client moved to its other address family", "client", key.String()[:16], "from", c.addr, "to", src)
		} else if isStream(src) != isStream(c.addr) {
			c.pathSince = now.UnixNano()
			s.log.Info("client moved", "client", key.String()[:16], "path", pathName(src))
		} else {
			s.log.Info("client address changed (NAT rebinding)", "client", key.String()[:16], "from", c.addr, "to", src)
		}
		c.addr = src
		c.conn = conn
		// Its record and its tree neighbours learn the new address once
		// it has shown that it receives there (onChallengeReply).
	} else if c.proven == src && since(now, c.written) >= RecordRefresh {
		s.queueRecord(c, now)
	}
	if c.proven != src {
		news = true // the pong carries nothing new, but the Challenge must go
	}
	c.counter = m.Counter
	c.lastSeen = now.UnixNano()
	if m.ProbeMillis > 0 {
		s.probes[probeKey{c, is6(src)}] = probe{after: min(time.Duration(m.ProbeMillis)*time.Millisecond, MaxProbe), counter: m.Counter}
		s.kickSender()
	} else {
		delete(s.probes, probeKey{c, is6(src)})
	}
	for i, sb := range m.Subs {
		if statuses[i].Status != wire.StatusOK {
			continue
		}
		r := s.repo(sb.RepoID)
		su := c.sub(sb.RepoID)
		if su == nil {
			// A new follower starts at the head: no history replay. A fresh
			// client whose earlier pong was lost keeps the start it was given.
			su = &sub{c: c, r: r, rto: InitialRTO, acked: r.head, clientAt: r.head}
			c.subs = append(c.subs, su)
			r.subs.add(su)
			news = true
		}
		if !sb.Known {
			news = true // the client learns where it starts from the pong
		} else {
			// The client's own report is the truth about what it handled.
			su.acked = min(sb.LastSeq, r.head)
			su.clientAt = su.acked
		}
		su.sent = su.acked
		statuses[i] = wire.SubStatus{Status: wire.StatusOK, Position: su.acked}
		if su.acked < r.head {
			su.rto = InitialRTO
			s.pending.add(su)
			s.kickSender()
		}
		if s.fan != nil && c.peer != nil && su.node == nil {
			s.joinTree(su, now) // a new repository, or back after eviction
		}
	}
	// A daemon's keepalive names everything it follows here (at most
	// wire.MaxSubs): what it no longer names, or may no longer follow, is
	// dropped, so a client holds at most wire.MaxSubs subscriptions
	// however many keepalives it sends.
	for i := len(c.subs) - 1; i >= 0; i-- {
		if su := c.subs[i]; !namedOK(m.Subs, statuses, su.r.id) {
			s.dropSub(su, now)
			c.subs = append(c.subs[:i], c.subs[i+1:]...)
		}
	}
	if !news {
		s.stats.Quiet++
		return nil
	}
	pong := s.seal(&wire.Pong{Counter: m.Counter, Observed: src, Statuses: statuses}, key, &shared, reqLen)
	s.offerNodes(c) // a cluster's nodes, when they changed since it last heard
	if c.proven != src {
		s.challenge(c, src, reqLen-len(pong), now)
		return pong
	}
	if s.fan != nil && c.peer == nil && len(pong)+fanoutSealedLen <= reqLen {
		// Offer fan-out with each pong until the client answers (or never:
		// an old or --no-peer daemon is served directly). Both replies
		// together stay within the keepalive's size.
		s.note(c, s.fanoutMsg())
	}
	return pong
}

// fanoutSealedLen is the size of a sealed Fanout message.
const fanoutSealedLen = wire.Overhead + 1 + 32 + 1

// authorised says whether key may follow repoID now. A subscription keeps
// the authorisation it read for authRecheck; otherwise the file is read.
func (s *Server) authorised(c *client, repoID string, key wire.Key, now time.Time) bool {
	if s.cfg.Open {
		return true
	}
	var su *sub
	if c != nil {
		su = c.sub(repoID)
	}
	if su != nil && since(now, su.authRead) < authRecheck {
		return now.Unix() < su.authExpiry
	}
	exp, ok := s.cfg.Store.AuthExpiry(repoID, key)
	if cexp, cok := s.clusterAuthExpiry(repoID, key); cok && (!ok || cexp.After(exp)) {
		exp, ok = cexp, true // registered through another node's server
	}
	if su != nil {
		su.authRead, su.authExpiry = now.UnixNano(), 0
		if ok {
			su.authExpiry = exp.Unix()
		}
	}
	return ok && now.Before(exp)
}

// seal encodes a reply, refusing (and counting) any that would be larger
// than the request that caused it.
func (s *Server) seal(m wire.Message, to wire.Key, shared *[32]byte, reqLen int) []byte {
	b, err := s.sealer.Seal(nil, m, s.pub, shared)
	if err != nil {
		return nil
	}
	if len(b) > reqLen {
		s.stats.Amplification++
		return nil
	}
	return b
}
