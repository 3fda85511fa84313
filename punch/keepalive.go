package punch

import (
	"context"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

func (d *Daemon) learnReflexive(ctx context.Context, p *serverLink) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	srv := p.server()
	addr, err := d.stun.bind(ctx, d.cfg.Conn, srv.Addr)
	if err != nil {
		d.log.Info("STUN: no reflexive address yet", "server", srv.Addr, "err", err)
		return
	}
	d.log.Info("STUN: reflexive address", "server", srv.Addr, "reflexive", addr)
	// The rendezvous answers over UDP: not dead (stream.go).
	p.mu.Lock()
	p.lastHeard = time.Now()
	p.mu.Unlock()
}

// keepaliveLoop keeps the NAT mapping open and reports the daemon's position.
// An unanswered keepalive is repeated after 1 s, 2 s, 4 s ... up to the
// interval. Unless the user fixed the interval, it also learns the NAT's
// mapping lifetime (see lifetime.go) and adapts the interval to it.
func (d *Daemon) keepaliveLoop(ctx context.Context, p *serverLink) {
	retry := firstRetry
	search := newLifetimeSearch(d.cfg.FixedKeepalive)
	for {
		probe := search.nextProbe()
		if p.onStream() != nil {
			probe = 0 // a stream tells nothing of the NAT's UDP mappings
		}
		// A quiet keepalive (never a probe) has no pong to wait for.
		if quiet := d.sendKeepalive(p, probe); !quiet {
			if !sleepUntil(ctx, p.pong, retry) {
				if ctx.Err() != nil {
					return
				}
				retry = min(2*retry, search.interval())
				continue
			}
			retry = firstRetry
		}
		p.mu.Lock()
		denied := p.denied
		p.mu.Unlock()
		if denied {
			sleepUntil(ctx, p.ping, DeniedRetry)
			if ctx.Err() != nil {
				return
			}
			continue
		}
		if probe > 0 {
			survived, conclusive := d.awaitProbe(ctx, p, probe)
			if ctx.Err() != nil {
				return
			}
			if conclusive {
				if !survived {
					d.log.Info("NAT mapping did not survive the idle time: shorter keepalives", "server", p.server().Addr, "idle", probe)
				}
				if search.record(probe, survived) {
					d.log.Info("keepalive interval chosen", "server", p.server().Addr, "interval", search.interval(),
						"survived_idle", search.lo, "failed_idle", search.hi)
				}
			}
			d.setInterval(p, search.interval())
			continue // a keepalive now: after a failure it re-opens the mapping
		}
		d.setInterval(p, search.interval())
		sleepUntil(ctx, p.ping, search.interval())
		if ctx.Err() != nil {
			return
		}
	}
}

// awaitProbe waits, silent, for the probe ping. It reports whether the
// mapping survived, and whether the answer counts (a restart ping or the
// daemon's own traffic cut it short).
func (d *Daemon) awaitProbe(ctx context.Context, p *serverLink, x time.Duration) (survived, conclusive bool) {
	for {
		p.mu.Lock()
		deadline := p.lastSent.Add(x + probeGrace)
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
		case <-p.probeOK:
			t.Stop()
			return true, true
		case <-p.ping:
			t.Stop()
			return false, false // the server wants a keepalive now
		case <-t.C:
			// Loop: an ack sent meanwhile moved lastSent and the deadline.
		}
	}
}

func (d *Daemon) setInterval(p *serverLink, iv time.Duration) {
	p.mu.Lock()
	p.interval = iv
	p.mu.Unlock()
}

// Interval is the keepalive interval in use for a server.
func (d *Daemon) Interval(server wire.Key) time.Duration {
	p := d.link(server)
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.interval
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

// sendKeepalive sends a keepalive, quiet (no pong wanted) when the daemon
// needs nothing from the answer: it reports whether it was.
func (d *Daemon) sendKeepalive(p *serverLink, probe time.Duration) (quiet bool) {
	return d.sendKeepaliveVia(p, probe, false)
}

// sendKeepaliveVia is sendKeepalive, over UDP even on a stream with udp.
func (d *Daemon) sendKeepaliveVia(p *serverLink, probe time.Duration, udp bool) (quiet bool) {
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
	// The counter only grows, across restarts too: it starts from the clock.
	p.counter = max(p.counter+1, uint64(now.UnixNano()))
	p.lastSent = now
	p.sentFor = srv.Repos
	quiet = probe == 0 && allKnown && !p.denied && !p.lastPong.IsZero() && now.Sub(p.lastPong) < wire.PongRefresh
	m := &wire.Keepalive{Counter: p.counter, ProbeMillis: uint32(probe.Milliseconds()), Subs: subs, Quiet: quiet}
	p.probeCounter = 0
	if probe > 0 {
		p.probeCounter = p.counter
	}
	p.mu.Unlock()
	d.sendVia(p, m, udp)
	return quiet
}

func (d *Daemon) send(p *serverLink, m wire.Message) { d.sendVia(p, m, false) }

// sendVia sends on the link's stream when it has one, unless udp, else
// over UDP.
func (d *Daemon) sendVia(p *serverLink, m wire.Message, udp bool) {
	b, err := wire.Seal(nil, m, d.pub, &p.shared)
	if err != nil {
		d.log.Error("cannot seal", "err", err)
		return
	}
	if _, ok := m.(*wire.Keepalive); ok {
		b = p.withCookie(b, time.Now())
	}
	// Every datagram refreshes the NAT mapping: a probe's silence counts
	// from the last one.
	p.mu.Lock()
	p.lastSent = time.Now()
	p.mu.Unlock()
	if ls := p.onStream(); ls != nil && !udp {
		if err := ls.send(b); err != nil {
			d.log.Debug("send on the stream failed", "err", err)
		}
		return
	}
	addr := p.server().Addr
	if err := udpconn.WriteTo(d.cfg.Conn, b, addr); err != nil {
		d.log.Debug("send failed", "server", addr, "err", err)
	}
}
