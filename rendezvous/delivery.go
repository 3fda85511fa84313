package rendezvous

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// sub is one client's subscription to one repository: what it acked, what
// is in flight, and when its window is sent again.
type sub struct {
	c *client
	r *repo
	// at is where it sits in the subSets it can be in (see subSet).
	at    [3]int
	acked uint64 // the client handled every event up to here (or needs none of them: a ref filter)
	// clientAt is the client's own position, from its last ack or
	// keepalive: acked passes it only over events its filter leaves out.
	clientAt uint64
	sent     uint64 // highest seq sent in the current window
	nextSend int64  // unix nanoseconds: when the window is sent again
	// The authorisation last read for this subscription: its expiry (unix
	// seconds) and when it was read (unix nanoseconds).
	authExpiry, authRead int64
	rto                  time.Duration
	// Fan-out: its place in the repository's tree (nil: not in one), and
	// while the tree has the next event to deliver, until when (unix
	// nanoseconds; 0: not waiting for the tree). While it waits it sits
	// in the server's treeWaits, not in its pending set.
	node     *tnode
	treeWait int64
}

// waitForTree gives the tree until the member's deadline to deliver what
// the subscription is missing, unless the rendezvous is sending to it
// directly already (the rendezvous's own children always are). It reports
// whether the member waits for the tree, newly or already.
func (s *Server) waitForTree(su *sub, now time.Time) bool {
	if su.treeWait != 0 {
		// Parked; or its deadline passed, and appendDue serves it directly.
		return su.at[treeSlot] != 0
	}
	if su.node == nil || su.node.parent == nil || su.sent > su.acked {
		return false
	}
	su.treeWait = s.treeWaits.park(su, now.Add(treeDeadline(su.node.depth)).UnixNano())
	su.nextSend = su.treeWait
	return true
}

// stopTreeWait ends a member's wait for the tree, if it waits.
func (s *Server) stopTreeWait(su *sub) {
	if su.treeWait != 0 {
		s.treeWaits.unpark(su, su.treeWait)
		su.treeWait = 0
	}
}

// onAck takes a client's acknowledgement of everything up to m.Seq.
func (s *Server) onAck(c *client, m *wire.Ack, src netip.AddrPort, now time.Time) {
	su := c.sub(m.RepoID)
	if su == nil {
		s.stats.Unexpected++
		return
	}
	s.stats.Acks++
	c.seenFrom(src, now)
	if sb := c.standby; sb != nil && src == sb.proven && src == sb.addr {
		// The client answered on its standby path: that path most
		// recently confirmed that it works, so deliveries go there.
		s.swapPaths(c, now, "an ack came on it")
	}
	if m.Seq <= su.acked || m.Seq > su.r.head {
		return // duplicate or stale ack
	}
	su.acked, su.clientAt = m.Seq, m.Seq
	s.stats.LastAckUnixNano = now.UnixNano()
	su.sent = max(su.sent, su.acked)
	if len(su.r.events) > 0 {
		s.skipFiltered(su, su.r.events[0].Seq)
	}
	// Progress: restart the timer for whatever is still in flight.
	su.rto = InitialRTO
	su.nextSend = now.Add(su.rto).UnixNano()
	if su.treeWait != 0 {
		// The tree is delivering: a new deadline for the rest, if any.
		s.stopTreeWait(su)
		if su.acked < su.r.head && s.waitForTree(su, now) {
			return
		}
	}
	if su.acked < su.r.head {
		s.pending.add(su)
		s.kickSender()
	} else {
		s.pending.remove(su)
	}
}

// sendDue sends new events while a subscription's window has room, and
// retransmits the whole window when its timer expires. It returns when it
// next has something to do.
func (s *Server) sendDue() time.Time {
	now := time.Now()
	next := now.Add(idleWake)
	var probes []job
	s.mu.Lock()
	if now.Sub(s.swept) >= idleWake {
		s.swept = now
		s.forgetSilent(now)
	}
	notes := s.notes
	s.notes = nil
	if s.fan != nil {
		if t := s.resendEdges(now); !t.IsZero() && t.Before(next) {
			next = t
		}
		notes = append(notes, s.notes...) // resent edges
		s.notes = nil
	}
	// Members whose tree deadline passed are served directly (appendDue
	// counts the fallback); the others cost nothing until theirs.
	s.treeWaits.expire(now, s.pending.add)
	if t := s.treeWaits.earliest(); !t.IsZero() && t.Before(next) {
		next = t
	}
	due := s.due[:0]
	// Backwards, so that removing (which moves the last one here) is safe.
	for i := len(s.pending.list) - 1; i >= 0; i-- {
		su := s.pending.list[i]
		if su.acked >= su.r.head {
			s.pending.remove(su)
			continue
		}
		if since(now, su.c.lastHeard()) > ClientTimeout {
			// Lapsed: stop retransmitting; its next keepalive resumes catch-up.
			s.pending.remove(su)
			continue
		}
		due = append(due, su)
	}
	s.due = due
	for k, pr := range s.probes {
		conn, addr, proven, lastSeen, ok := k.c.pathFor(k.v6)
		if !ok {
			delete(s.probes, k)
			continue
		}
		if due := time.Unix(0, lastSeen).Add(pr.after); now.Before(due) {
			if due.Before(next) {
				next = due
			}
			continue
		}
		delete(s.probes, k)
		if proven != addr {
			continue // a probe only where the client receives
		}
		probes = append(probes, job{conn: conn, to: addr, c: k.c, msg: &wire.Ping{Counter: pr.counter}})
		s.stats.Probes++
	}
	s.mu.Unlock()
	if len(probes) > 0 || len(notes) > 0 {
		s.senders[0].sealAndSend(s, append(probes, notes...))
	}
	if t := s.sendChunks(due); !t.IsZero() && t.Before(next) {
		next = t
	}
	clear(due) // the reused list must not keep forgotten clients alive
	return next
}

// sendChunk is how many subscriptions a sender plans under one hold of the
// lock before sealing and sending them outside it: small enough that the
// reader (whose acks would otherwise overflow the socket buffer) is never
// kept waiting long, and that the first datagrams of a large fan-out leave
// at once; large enough to fill a sendmmsg.
const sendChunk = 256

// sendChunks plans, seals and sends what the due subscriptions owe, chunk by
// chunk, on every sender in parallel. Each chunk's timers start when the
// chunk is planned, just before it leaves. It returns the earliest
// retransmission time among them (zero if none).
func (s *Server) sendChunks(due []*sub) time.Time {
	if len(due) == 0 {
		return time.Time{}
	}
	var claimed atomic.Int64
	nexts := make([]time.Time, len(s.senders))
	run := func(w int) {
		sw := s.senders[w]
		for {
			hi := int(claimed.Add(sendChunk))
			lo := hi - sendChunk
			if lo >= len(due) {
				return
			}
			hi = min(hi, len(due))
			now := time.Now()
			s.mu.Lock()
			sw.jobs = sw.jobs[:0]
			for _, su := range due[lo:hi] {
				sw.jobs = s.appendDue(sw.jobs, su, now)
				if ns := time.Unix(0, su.nextSend); su.acked < su.r.head && (nexts[w].IsZero() || ns.Before(nexts[w])) {
					nexts[w] = ns
				}
			}
			s.mu.Unlock()
			sw.sealAndSend(s, sw.jobs)
		}
	}
	workers := min(len(s.senders), (len(due)+sendChunk-1)/sendChunk)
	if workers == 1 {
		run(0)
	} else {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() { run(w) })
		}
		wg.Wait()
	}
	var next time.Time
	for _, t := range nexts {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	return next
}

// appendDue seals what one subscription owes now: a resync notice if what
// the client needs fell out of retention, new events that fit the window,
// or, when the timer has expired, the whole window again.
func (s *Server) appendDue(out []job, su *sub, now time.Time) []job {
	r, c := su.r, su.c
	if c.proven != c.addr {
		// Not until the client shows that it receives there: look again
		// after a round trip's worth (the Challenge is on its way).
		su.nextSend = now.Add(InitialRTO).UnixNano()
		return out
	}
	first := r.head + 1
	if len(r.events) > 0 {
		first = r.events[0].Seq
	}
	if su.treeWait != 0 {
		if now.UnixNano() < su.treeWait {
			// The tree has until then; its bucket brings the member back.
			su.nextSend = su.treeWait
			s.pending.remove(su)
			return out
		}
		// The tree did not deliver in time: this client is served directly
		// until it has caught up.
		s.stopTreeWait(su)
		s.stats.DirectFallbacks++
	}
	s.skipFiltered(su, first)
	inFlight := su.sent > su.acked
	expired := inFlight && now.UnixNano() >= su.nextSend
	if expired && c.standbyUsable(now) {
		// Unanswered on this path: the retransmission tries the other
		// address family's, and an ack there keeps it.
		s.swapPaths(c, now, "a delivery went unacknowledged")
	}
	if expired && su.node != nil && su.rto >= evictAfterRTO {
		// It answers nobody: out of the tree, so that its subtree stops
		// waiting for it; its next packet puts it back.
		s.leaveTree(su, now)
		s.stats.TreeEvictions++
	}
	if su.acked+1 < first {
		if inFlight && !expired {
			return out
		}
		// The notice puts the client at the head; but when what follows
		// the missing events fits in one window (a gap left by lost held
		// events, or a short damaged stretch), it puts the client just
		// before them, and they come as notifications, refs and all.
		at := r.head
		if len(r.events) > 0 && r.head-first < Window {
			at = first - 1
		}
		out = append(out, job{conn: c.conn, to: c.addr, c: c, msg: &wire.Resync{HeadSeq: at, FirstSeq: first, TimeMilli: now.UnixMilli(), Recipient: c.key, RepoID: r.id}})
		s.stats.Resyncs++
		su.sent = at
		s.armTimer(su, now, expired)
		return out
	}
	from := su.sent + 1
	if expired {
		from = su.acked + 1
	}
	end := min(su.acked+Window, r.head)
	if from > end {
		return out
	}
	refs := su.refFilter()
	// after is the client's event before the next one sent: with a
	// filter, the last wanted one before it, or what the client acked.
	after := from - 1
	for refs != nil && after > su.acked && !su.wanted(refs, after, first) {
		after--
	}
	if refs != nil && after == su.acked {
		// Whatever lies between the client's own position and here, its
		// filter leaves out (skipFiltered passed only over such).
		after = su.clientAt
	}
	withMsg := c.prefs != nil && c.prefs.messages
	for seq := from; seq <= end; seq++ {
		if !su.wanted(refs, seq, first) {
			if seq > su.sent {
				s.stats.Filtered++
			}
			continue
		}
		// The event is immutable, and loading more of the log never moves
		// it: the sender may read it outside the lock.
		j := job{conn: c.conn, to: c.addr, c: c, r: r, ev: &r.events[seq-first], after: after, withMsg: withMsg}
		if sg := &r.sigs; c.peer != nil && refs == nil && *sg != nil && (*sg)[seq-first].plain != ([wire.SigLen]byte{}) {
			// A peer gets the signed event, which it may forward: with its
			// message when every member of its tree can read that. (A
			// filtered client gets Notify, whose After says what it skipped.)
			j.sig, j.withMsg = &(*sg)[seq-first].plain, false
			if withMsg && (*sg)[seq-first].msg != ([wire.SigLen]byte{}) && (su.node == nil || r.tree == nil || r.tree.signedMessages()) {
				j.sig, j.withMsg = &(*sg)[seq-first].msg, true
			}
		}
		out = append(out, j)
		after = seq
		if seq <= su.sent {
			s.stats.Retransmits++
		} else {
			s.stats.Notifies++
		}
	}
	su.sent = max(su.sent, end)
	if expired || !inFlight {
		s.armTimer(su, now, expired)
	}
	return out
}

// armTimer starts the retransmission timer; after an expiry it backs off.
func (s *Server) armTimer(su *sub, now time.Time, backoff bool) {
	if backoff {
		su.rto = min(2*su.rto, MaxRTO)
	}
	su.nextSend = now.Add(su.rto).UnixNano()
}
