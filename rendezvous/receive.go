package rendezvous

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// readFailed says whether a read error ends the read loop (shutdown: with
// no error; anything else: with that error).
func (s *Server) readFailed(err error) error {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil
	}
	return fmt.Errorf("rendezvous: read: %w", err)
}

// handle processes one datagram that arrived on cell (ip, port) of grid gi
// and returns the reply to send back from that cell, if any. A STUN answer
// that must leave from another cell or go elsewhere is sent here.
func (s *Server) handle(gi, ip, port int, b []byte, src netip.AddrPort) []byte {
	return s.handleAt(gi, ip, port, b, src, time.Now())
}

// handleAt is handle for a datagram read at now: the read loop reads the
// clock once for a batch (its calls were 3% of the rendezvous's CPU for
// a push through a tree, one per ack).
func (s *Server) handleAt(gi, ip, port int, b []byte, src netip.AddrPort, now time.Time) []byte {
	g := &s.grids[gi]
	if wire.LooksLikeSTUN(b) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if !s.stunRL.allow(src.Addr(), now) {
			s.stats.STUNLimited++
			return nil
		}
		resp, fromIP, fromPort, to := stunAnswer(g, ip, port, b, src)
		if resp == nil {
			s.stats.Malformed++
			return nil
		}
		s.stats.STUN++
		if fromIP == ip && fromPort == port && to == src {
			return resp
		}
		s.datagramsOut.Add(1)
		udpconn.WriteTo(g[fromIP][fromPort], resp, to)
		return nil
	}
	reply, _ := s.handleGCN(g[ip][port], b, src, now)
	return reply
}

// handleGCN processes one gcn-punch datagram that arrived on conn (a UDP
// socket, or a stream over SSH) at now and returns the reply to send back
// on it. It also says when the datagram was rejected as malformed or
// forged (a stream ends on those).
func (s *Server) handleGCN(conn udpconn.Conn, b []byte, src netip.AddrPort, now time.Time) ([]byte, error) {
	s.mu.Lock()
	locked := true
	defer func() {
		if locked {
			s.mu.Unlock()
		}
	}()
	cookied := false
	if wire.IsCookied(b) {
		var ck [wire.CookieLen]byte
		var err error
		if ck, b, err = wire.ParseCookied(b); err != nil {
			s.stats.Malformed++
			return nil, err
		}
		sender, _, _, _ := wire.ParseHeader(b)
		cookied = s.cookieValid(cookieBusy, ck, sender, src, now)
	}
	sender, _, _, err := wire.ParseHeader(b)
	if err != nil {
		s.stats.Malformed++
		return nil, err
	}
	c := s.clients[sender]
	var shared [32]byte
	if c != nil {
		shared = c.shared
	} else {
		// Precomputing a key for an unseen sender is the expensive step:
		// limit it per source and over all sources, so that a flood of
		// random keys cannot burn the CPU, and do it outside the lock, so
		// that no known client's datagram waits for it.
		if !s.unkRL.allow(src.Addr(), now) {
			s.stats.Limited++
			return nil, nil
		}
		if !s.admitNewKey(cookied, now) {
			return s.busy(sender, src, cookied, now), nil
		}
		s.mu.Unlock()
		locked = false
		shared = wire.SharedKey(sender, s.priv)
		s.mu.Lock()
		locked = true
		c = s.clients[sender] // another socket's reader may have let it in meanwhile
	}
	_, msg, err := s.opener.Open(b, &shared)
	switch {
	case errors.Is(err, wire.ErrAuth):
		s.stats.Forged++
		s.logForged(sender, src, now)
		return nil, err
	case err != nil:
		s.stats.Malformed++
		return nil, err
	}
	switch m := msg.(type) {
	case *wire.Keepalive:
		return s.onKeepalive(conn, c, sender, shared, m, src, len(b), now), nil
	}
	if c == nil {
		// Everything else (acks, offers, edge reports, challenge answers)
		// only makes sense from a live client: it subscribed first.
		s.stats.Unexpected++
		return nil, nil
	}
	switch m := msg.(type) {
	case *wire.Ack:
		s.onAck(c, m, src, now)
	case *wire.PeerInfo:
		c.seenFrom(src, now)
		s.onPeerInfo(c, m, now)
	case *wire.EdgeState:
		c.seenFrom(src, now)
		s.onEdgeState(c, m, now)
	case *wire.ChallengeReply:
		s.onChallengeReply(c, m, src, now)
	case *wire.Subscribe:
		return s.onSubscribe(c, m, src, now), nil
	default:
		s.stats.Unexpected++
	}
	return nil, nil
}

// forgedLogGap spaces the log lines about datagrams that fail
// authentication: a daemon with the wrong --server-key sends one every few
// seconds, and a flood of forged ones must not flood the log.
const forgedLogGap = 10 * time.Second

// logForged logs a datagram that failed authentication, at most once per
// forgedLogGap, with how many came since the last line. Called with mu
// held.
func (s *Server) logForged(sender wire.Key, src netip.AddrPort, now time.Time) {
	s.forgedUnlogged++
	if now.Sub(s.forgedLoggedAt) < forgedLogGap {
		return
	}
	s.log.Warn("datagrams that fail authentication: a client with the wrong server key (its --server-key must be this rendezvous's server.pub), or forged",
		"last_from", src, "last_client", sender.String()[:16], "count", s.forgedUnlogged)
	s.forgedLoggedAt, s.forgedUnlogged = now, 0
}

// Reading in batches. Under load each datagram costing its own recvfrom,
// wakeup and sendto dominates the rendezvous's CPU, so it reads with
// recvmmsg, answers with sendmmsg, and, when packets arrive faster than
// coalesceAbove a second, waits coalesceWait before the next read so that
// each call carries several. At low rates nothing waits.
const (
	readBatch = 64
	// coalesceAbove is the packet rate above which reads are coalesced.
	coalesceAbove = 2000
	// rateWindow is what the rate is counted over. The acks of a push come
	// as a burst: counted over a second, the first 2000 of them could each
	// be read with a wakeup of their own; over 100 ms, the first 200. A
	// push through a tree of 10k cost the rendezvous 41 ms instead of 49
	// (medians of 6 runs each, make bench's tree rows).
	rateWindow = 100 * time.Millisecond
	// coalesceWait delays a pong or an ack's processing by at most this;
	// both tolerate it (retransmission timeouts start at 250 ms).
	coalesceWait = 10 * time.Millisecond
)

// coalesceAboveInWindow is coalesceAbove counted over rateWindow.
const coalesceAboveInWindow = coalesceAbove * int(rateWindow) / int(time.Second)

// readLoop reads the socket of cell (ip, port) of grid gi in batches and
// answers each batch with one batch of replies.
func (s *Server) readLoop(gi, ip, port int) error {
	conn := s.grids[gi][ip][port]
	pkts := make([]udpconn.Packet, readBatch)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 2048)
	}
	replies := make([]udpconn.Packet, 0, readBatch)
	// The packet rate: datagrams in the current window, and in the one
	// before (so that coalescing does not stop at each window's start).
	var windowStart time.Time
	var windowCount, lastWindow int
	for {
		n, err := conn.ReadBatch(pkts)
		if err != nil {
			return s.readFailed(err)
		}
		s.datagramsIn.Add(uint64(n))
		now := time.Now()
		replies = replies[:0]
		for _, p := range pkts[:n] {
			if reply := s.handleAt(gi, ip, port, p.Buf, p.Addr, now); reply != nil {
				replies = append(replies, udpconn.Packet{Buf: reply, Addr: p.Addr})
			}
		}
		if len(replies) > 0 {
			conn.WriteBatch(replies)
			s.datagramsOut.Add(uint64(len(replies)))
		}
		if now.Sub(windowStart) > rateWindow {
			lastWindow = windowCount
			if now.Sub(windowStart) > 2*rateWindow {
				lastWindow = 0 // a quiet window went by
			}
			windowStart, windowCount = now, 0
		}
		windowCount += n
		if n < readBatch && max(windowCount, lastWindow) > coalesceAboveInWindow {
			time.Sleep(coalesceWait)
		}
	}
}
