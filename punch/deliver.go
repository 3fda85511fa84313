package punch

import (
	"context"
	"slices"

	"github.com/gitchat/gcn-punch/wire"
)

func (d *Daemon) saveLocked() {
	if err := d.state.save(d.cfg.StateDir); err != nil {
		d.log.Error("cannot save state; acknowledgements withheld", "err", err)
	}
}

func (d *Daemon) follows(p *serverLink, repo string) bool {
	return slices.Contains(p.server().Repos, repo)
}

// arrival is an event as the daemon takes it, whichever way it came.
type arrival struct {
	*wire.Forward // the event; Sig zero when it came unsigned
	// after is this daemon's event before it: Seq-1, unless the rendezvous
	// left out the events between as not wanted (its ref filter).
	after uint64
	chat  *wire.Chat // the push's message, when the notification carried one
}

// onNotify handles a notification sent to this daemon alone (unsigned: it
// is never forwarded).
func (d *Daemon) onNotify(p *serverLink, n *wire.Notify) {
	a := arrival{Forward: &wire.Forward{Seq: n.Seq, TimeMilli: n.TimeMilli, RepoID: n.RepoID, Ref: n.Ref, Old: n.Old, New: n.New}, after: n.Seq - 1}
	if n.WithMessage {
		a.after = n.After
		if n.Chat != (wire.Chat{}) {
			c := n.Chat
			a.chat = &c
		}
	}
	d.onArrival(p, a)
}

// onEvent handles a signed event, from the parent or the rendezvous; its
// message, if it has one, is signed with it.
func (d *Daemon) onEvent(p *serverLink, n *wire.Forward) {
	a := arrival{Forward: n, after: n.Seq - 1}
	if n.WithMessage && n.Chat != (wire.Chat{}) {
		c := n.Chat
		a.chat = &c
	}
	d.onArrival(p, a)
}

// onArrival handles events in order, exactly once, whichever way they came:
// the position and the pending action are saved before the ack leaves.
// A signed event (Sig not zero) is then forwarded to the children. An event
// whose ref the daemon's --refs leave out is taken (and acked) without an
// action.
func (d *Daemon) onArrival(p *serverLink, n arrival) {
	if !d.follows(p, n.RepoID) {
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	d.mu.Lock()
	rs := d.state.repo(p.key, n.RepoID)
	if !rs.Known {
		// No pong has told us where we start, so we cannot tell whether
		// earlier events were lost: leave it unacked (the server sends it
		// again) and ask for a pong now.
		d.stats.Early++
		d.mu.Unlock()
		kick(p.first().ping)
		return
	}
	switch {
	case n.Seq <= rs.LastSeq:
		d.stats.Duplicates++
		last := rs.LastSeq
		d.mu.Unlock()
		d.send(p, &wire.Ack{RepoID: n.RepoID, Seq: last})
		d.checkAckPath(p)
		return
	case n.after > rs.LastSeq:
		d.stats.Reordered++
		d.mu.Unlock()
		p.mu.Lock()
		h := p.held[n.RepoID]
		if h == nil {
			h = map[uint64]arrival{}
			p.held[n.RepoID] = h
		}
		if old, ok := h[n.Seq]; len(h) < reorderWindow && (!ok || old.Sig == [wire.SigLen]byte{}) {
			if ok && old.chat != nil && n.chat == nil {
				n.chat = old.chat // the signed copy carries no message
			}
			h[n.Seq] = n // a signed copy replaces an unsigned one: it can be forwarded
		}
		p.mu.Unlock()
		return
	}
	// In order: take it and whatever held events now follow it.
	var signed []*wire.Forward
	p.mu.Lock()
	h := p.held[n.RepoID]
	for next, ok := n, true; ok; {
		rs.LastSeq = next.Seq
		if wire.MatchAny(d.cfg.Refs, next.Ref) {
			d.stats.Notifications++
			ev := Event{ServerKey: p.key.String(), Repo: next.RepoID, Ref: next.Ref,
				Old: next.Old, New: next.New, Seq: next.Seq, TimeMilli: next.TimeMilli}
			if c := next.chat; c != nil {
				ev.Author, ev.Subject, ev.Count = c.Author, c.Subject, int(c.Count)
			}
			d.state.Pending = append(d.state.Pending, ev)
		} else {
			d.stats.Filtered++
		}
		if next.Sig != ([wire.SigLen]byte{}) {
			signed = append(signed, next.Forward)
		}
		delete(h, next.Seq)
		next, ok = nextHeld(h, rs.LastSeq)
	}
	for seq := range h {
		if seq <= rs.LastSeq {
			delete(h, seq)
		}
	}
	p.mu.Unlock()
	d.commitLocked(p, n.RepoID, rs.LastSeq)
	d.forward(p, signed)
}

// nextHeld finds the held event that follows last: the lowest one whose
// previous event is at or before last.
func nextHeld(h map[uint64]arrival, last uint64) (arrival, bool) {
	var best arrival
	found := false
	for seq, a := range h {
		if seq > last && a.after <= last && (!found || seq < best.Seq) {
			best, found = a, true
		}
	}
	return best, found
}

// commitLocked saves the state, releases mu, and only then acks and wakes
// the action worker: nothing is acknowledged that a crash could lose.
func (d *Daemon) commitLocked(p *serverLink, repo string, seq uint64) {
	err := d.state.save(d.cfg.StateDir)
	d.mu.Unlock()
	if err != nil {
		d.log.Error("cannot save state; not acknowledging", "err", err)
		return
	}
	d.send(p, &wire.Ack{RepoID: repo, Seq: seq})
	d.wakeWorker()
}

func (d *Daemon) onResync(p *serverLink, m *wire.Resync) {
	if !d.follows(p, m.RepoID) {
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	d.mu.Lock()
	rs := d.state.repo(p.key, m.RepoID)
	if rs.Known && m.HeadSeq <= rs.LastSeq {
		last := rs.LastSeq
		d.stats.Duplicates++
		d.mu.Unlock()
		d.send(p, &wire.Ack{RepoID: m.RepoID, Seq: last})
		return
	}
	d.log.Warn("missed events: they fell out of the server's retention; resyncing with a full pull",
		"repo", m.RepoID, "had", rs.LastSeq, "oldest_kept", m.FirstSeq, "head", m.HeadSeq)
	rs.Known, rs.LastSeq = true, m.HeadSeq
	d.stats.Resyncs++
	d.state.Pending = append(d.state.Pending, Event{ServerKey: p.key.String(), Repo: m.RepoID, Seq: m.HeadSeq, TimeMilli: m.TimeMilli, Resync: true})
	d.commitLocked(p, m.RepoID, m.HeadSeq)
}

func (d *Daemon) wakeWorker() { kick(d.work) }

// actionWorker runs pending events' actions one at a time, in order, and
// removes each from the saved state when its actions finish.
func (d *Daemon) actionWorker(ctx context.Context) {
	for {
		d.mu.Lock()
		if len(d.state.Pending) == 0 {
			d.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-d.work:
			}
			continue
		}
		ev := d.state.Pending[0]
		d.mu.Unlock()
		// A stop (SIGTERM) lets the running action finish rather than kill
		// the user's program half-way; only SIGKILL can interrupt it, and
		// then it runs again after restart (GCN_SEQ lets a program notice).
		d.cfg.Handle(context.WithoutCancel(ctx), ev)
		d.mu.Lock()
		d.state.Pending = d.state.Pending[1:]
		d.saveLocked()
		d.mu.Unlock()
	}
}

// checkAckPath is called when the rendezvous, over UDP, sends an event the
// daemon has acked: its ack may not have arrived. The next keepalive on
// that path asks for a pong, so that a path that carries nothing the
// daemon sends (its outgoing UDP dropped) is known within udpDeadAfter,
// and the daemon turns to SSH (stream.go). One check at a time: the rest
// of a window sent again asks nothing more.
func (d *Daemon) checkAckPath(p *serverLink) {
	p.mu.Lock()
	u := p.heardOn // set while a datagram from the rendezvous over UDP is handled
	p.mu.Unlock()
	if u != nil {
		p.checkPath(u)
	}
}
