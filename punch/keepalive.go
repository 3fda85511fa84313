package punch

import (
	"context"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

func (d *Daemon) learnReflexive(ctx context.Context, p *serverLink, u *udpPath) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	p.mu.Lock()
	srv := u.addr
	p.mu.Unlock()
	addr, err := d.stun.bind(ctx, d.cfg.Conn, srv)
	if err != nil {
		d.log.Info("STUN: no reflexive address yet", "server", srv, "err", err)
		return
	}
	d.log.Info("STUN: reflexive address", "server", srv, "reflexive", addr)
	d.heardOverUDP(p) // the rendezvous answers over UDP: not dead (stream.go)
}

// keepaliveLoop keeps one path's NAT mapping (or firewall pinhole) open and
// reports the daemon's position. An unanswered keepalive is repeated after
// 1 s, 2 s, 4 s ... up to the interval. Unless the user fixed the
// interval, it also learns the mapping lifetime on this path (see
// lifetime.go) and adapts the interval to it.
func (d *Daemon) keepaliveLoop(ctx context.Context, p *serverLink, u *udpPath) {
	retry := firstRetry
	search := newLifetimeSearch(d.cfg.FixedKeepalive)
	for {
		// What status shows, from the first keepalive on: the interval the
		// search stands at (the default until a probe has concluded, which
		// takes the first probe's whole idle time). Only a probe's outcome
		// changes it, and each outcome leads back here.
		d.setInterval(p, u, search.interval())
		probe := search.nextProbe()
		if p.onStream() != nil {
			probe = 0 // a stream tells nothing of the NAT's UDP mappings
		}
		// A quiet keepalive (never a probe) has no pong to wait for.
		if quiet := d.sendKeepalive(p, u, probe); !quiet {
			if !sleepUntil(ctx, u.pong, retry) {
				if ctx.Err() != nil {
					return
				}
				d.answered(p, u, false)
				retry = min(2*retry, search.interval())
				continue
			}
			d.answered(p, u, true)
			retry = firstRetry
		}
		p.mu.Lock()
		denied := p.denied
		p.mu.Unlock()
		if denied {
			sleepUntil(ctx, u.ping, DeniedRetry)
			if ctx.Err() != nil {
				return
			}
			continue
		}
		if probe > 0 {
			survived, conclusive := d.awaitProbe(ctx, p, u, probe)
			if ctx.Err() != nil {
				return
			}
			if conclusive {
				if !survived {
					d.log.Info("NAT mapping did not survive the idle time: shorter keepalives", "server", u.addr, "idle", probe)
				}
				if search.record(probe, survived) {
					d.log.Info("keepalive interval chosen", "server", u.addr, "family", u.family(), "interval", search.interval(),
						"survived_idle", search.lo, "failed_idle", search.hi)
				}
			}
			continue // a keepalive now: after a failure it re-opens the mapping
		}
		sleepUntil(ctx, u.ping, search.interval())
		if ctx.Err() != nil {
			return
		}
	}
}

// awaitProbe waits, silent on this path, for the probe ping. It reports
// whether the mapping survived, and whether the answer counts (a restart
// ping or the daemon's own traffic cut it short).
func (d *Daemon) awaitProbe(ctx context.Context, p *serverLink, u *udpPath, x time.Duration) (survived, conclusive bool) {
	for {
		p.mu.Lock()
		deadline := u.lastSent.Add(x + probeGrace)
		p.mu.Unlock()
		wait := deadline.Sub(time.Now())
		if wait <= 0 {
			return false, true
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return false, false
		case <-u.probeOK:
			t.Stop()
			return true, true
		case <-u.ping:
			t.Stop()
			return false, false // the server wants a keepalive now
		case <-t.C:
			// Loop: an ack sent meanwhile moved lastSent and the deadline.
		}
	}
}

func (d *Daemon) setInterval(p *serverLink, u *udpPath, iv time.Duration) {
	p.mu.Lock()
	u.interval = iv
	p.mu.Unlock()
}

// Interval is the keepalive interval in use for a server, on its primary
// path.
func (d *Daemon) Interval(server wire.Key) time.Duration {
	p := d.link(server)
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.primary.interval
}

// sleepUntil waits for dur, for a signal on c, or for ctx to end; it reports
// whether the signal came.
func sleepUntil(ctx context.Context, c <-chan struct{}, dur time.Duration) bool {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return false
	case <-c:
		return true
	}
}

// sendKeepalive sends a keepalive on a path, quiet (no pong wanted) when
// the daemon needs nothing from the answer: it reports whether it was.
func (d *Daemon) sendKeepalive(p *serverLink, u *udpPath, probe time.Duration) (quiet bool) {
	return d.sendKeepaliveVia(p, u, probe, false)
}

// sendKeepaliveVia is sendKeepalive, over UDP even on a stream with udp.
// On the primary path it is an ordinary keepalive (on the stream, when the
// link is on one, unless udp); on another, a standby one, over UDP.
func (d *Daemon) sendKeepaliveVia(p *serverLink, u *udpPath, probe time.Duration, udp bool) (quiet bool) {
	srv := p.server()
	d.mu.Lock()
	subs := make([]wire.Sub, 0, len(srv.Repos))
	allKnown := true
	for _, r := range srv.Repos {
		rs := d.state.repo(p.key, r)
		subs = append(subs, wire.Sub{RepoID: r, Known: rs.Known, LastSeq: rs.LastSeq})
		allKnown = allKnown && rs.Known
	}
	d.stats.KeepalivesSent++
	d.mu.Unlock()
	p.mu.Lock()
	now := time.Now()
	standby := u != p.primary
	// The counter only grows, across restarts and paths too: it starts
	// from the clock.
	p.counter = max(p.counter+1, uint64(now.UnixNano()))
	u.remember(sentKeepalive{counter: p.counter, standby: standby, repos: srv.Repos})
	// With several nodes to move to, every keepalive asks for a pong, so
	// that a node that dies is noticed within an interval (nodes.go).
	// A try of UDP from a stream asks too: only its answer moves the
	// daemon back (stream.go).
	quiet = probe == 0 && allKnown && !p.denied && !u.check && !u.lastPong.IsZero() && now.Sub(u.lastPong) < wire.PongRefresh && !p.multiNode() &&
		!(udp && p.stream != nil)
	m := &wire.Keepalive{Counter: p.counter, ProbeMillis: uint32(probe.Milliseconds()), Subs: subs, Quiet: quiet, Standby: standby}
	u.probeCounter = 0
	if probe > 0 {
		u.probeCounter = p.counter
	}
	if !quiet && p.owedSince.IsZero() && (standby || udp || p.stream == nil) {
		p.owedSince = now // an answer over UDP is owed from now (stream.go)
	}
	p.mu.Unlock()
	if standby {
		udp = true // a stream is the primary's
	}
	d.sendOn(p, u, m, udp)
	return quiet
}

// send sends a message to the rendezvous: on the link's stream when it has
// one, else on the path the rendezvous was last heard on.
func (d *Daemon) send(p *serverLink, m wire.Message) { d.sendOn(p, p.replyPath(), m, false) }

// sendOn sends on the link's stream when it has one, unless udp, else on
// path u over UDP.
func (d *Daemon) sendOn(p *serverLink, u *udpPath, m wire.Message, udp bool) {
	b, err := wire.Seal(nil, m, d.pub, &p.shared)
	if err != nil {
		d.log.Error("cannot seal", "err", err)
		return
	}
	if _, ok := m.(*wire.Keepalive); ok {
		b = p.withCookie(b, time.Now())
	}
	if ls := p.onStream(); ls != nil && !udp {
		if err := ls.send(b); err != nil {
			d.log.Debug("send on the stream failed", "err", err)
		}
		return
	}
	// Every datagram refreshes the NAT mapping: a probe's silence counts
	// from the last one (write notes it).
	d.write(p, u, b)
}
