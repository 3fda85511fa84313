package punch

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// readBatch is how many datagrams the daemon takes from its socket at once.
const readBatch = 16

// readLoop is the only reader of the daemon's socket: it sorts what arrives
// into the answers to its own STUN requests, other STUN (ICE's checks, for
// fan-out) and gcn datagrams.
func (d *Daemon) readLoop(ctx context.Context) error {
	pkts := make([]udpconn.Packet, readBatch)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 2048)
	}
	for {
		n, err := d.cfg.Conn.ReadBatch(pkts)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("punch: read: %w", err)
		}
		for _, p := range pkts[:n] {
			switch b := p.Buf; {
			case wire.LooksLikeSTUN(b):
				if !d.stun.handle(b) {
					if f := d.fan.Load(); f != nil {
						f.mc.feed(b, p.Addr)
					}
				}
			case wire.IsBusy(b):
				d.onBusy(b, p.Addr)
			case wire.LooksLikeGCN(b):
				d.handleGCN(ctx, b, p.Addr)
			default:
				d.count(func(s *Stats) { s.Malformed++ })
			}
		}
	}
}

func (d *Daemon) count(f func(*Stats)) {
	d.mu.Lock()
	f(&d.stats)
	d.mu.Unlock()
}

// countOpenFailure counts a datagram that did not open: forged (it fails
// authentication) or malformed (anything else).
func (d *Daemon) countOpenFailure(err error) {
	d.count(func(s *Stats) {
		if errors.Is(err, wire.ErrAuth) {
			s.Forged++
		} else {
			s.Malformed++
		}
	})
}

// handleGCN takes one gcn-punch datagram, from src over UDP or, with src
// zero, from a stream over SSH. It returns the error when the datagram
// does not parse or open (counted here): a stream ends on that.
func (d *Daemon) handleGCN(ctx context.Context, b []byte, src netip.AddrPort) error {
	sender, _, _, err := wire.ParseHeader(b)
	if err != nil {
		d.count(func(s *Stats) { s.Malformed++ })
		return err
	}
	p := d.link(sender)
	if p == nil {
		if !d.handlePeer(b, sender) {
			d.count(func(s *Stats) { s.Unexpected++ })
		}
		return nil
	}
	_, msg, err := wire.Open(b, &p.shared)
	if err != nil {
		d.countOpenFailure(err)
		return err
	}
	// The path it came on: over UDP, the one to its source address; on
	// the stream, the primary's (whose keepalives the stream carries).
	var u *udpPath
	if src.IsValid() {
		if u = p.pathAt(src); u == nil {
			d.count(func(s *Stats) { s.Unexpected++ }) // sealed by the rendezvous, from elsewhere
			return nil
		}
		if answersDaemon(msg) {
			d.heardOverUDP(p)
		}
		// What this datagram makes the daemon send (an ack, a challenge's
		// answer) goes back on the path it came on.
		p.mu.Lock()
		p.heardOn, p.heardAt = u, time.Now()
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			p.heardOn = nil
			p.mu.Unlock()
		}()
	} else {
		u = p.first()
	}
	switch m := msg.(type) {
	case *wire.Pong:
		d.onPong(p, u, m, src.IsValid())
		d.subscribe(p, false)
		// The rendezvous sends a Challenge with every pong until this
		// address is proven. If that Challenge was lost, the next quiet
		// keepalive would be a whole interval away: recheck each second
		// until the address is validated.
		d.startRecheck(ctx, p, u)
	case *wire.Notify:
		if m.Recipient != d.pub {
			d.count(func(s *Stats) { s.Forged++ })
			return nil
		}
		d.heardStandby(p, u)
		d.onNotify(p, m)
	case *wire.Resync:
		if m.Recipient != d.pub {
			d.count(func(s *Stats) { s.Forged++ })
			return nil
		}
		d.onResync(p, m)
	case *wire.Forward:
		// From the rendezvous itself, in its box: a tree member's direct
		// delivery. The box proves where it comes from; the signature
		// only matters to the children it is forwarded to. A daemon that
		// does not know the signing key restarted while in a tree.
		d.rejoinIfForgotten(ctx, p)
		d.heardStandby(p, u)
		d.onEvent(p, m)
	case *wire.Challenge:
		// The rendezvous sends nothing more here until this daemon shows
		// that it receives here: echo the cookie, under this daemon's key.
		// If the answer is lost, a keepalive a little later brings a new
		// Challenge; if it arrived, that keepalive costs one datagram.
		d.sendOn(p, u, &wire.ChallengeReply{Cookie: m.Cookie}, src.IsValid())
		p.mu.Lock()
		u.validated = false
		p.mu.Unlock()
		d.startRecheck(ctx, p, u)
	case *wire.Validated:
		p.mu.Lock()
		u.validated = true
		primary := u == p.primary
		p.mu.Unlock()
		if primary {
			d.subscribe(p, true)
		}
	case *wire.Subscribed:
		d.onSubscribed(p, m)
	case *wire.Nodes:
		d.onNodes(p, m)
	case *wire.Fanout:
		d.onFanout(ctx, p, m)
	case *wire.Edge:
		d.onEdge(ctx, p, m)
	case *wire.Ping:
		d.count(func(s *Stats) { s.Pings++ })
		p.mu.Lock()
		if u.probeCounter != 0 && m.Counter == u.probeCounter {
			u.probeCounter = 0
			p.mu.Unlock()
			kick(u.probeOK)
			return nil
		}
		now := time.Now()
		due := now.Sub(u.lastPinged) >= minPingGap
		if due {
			u.lastPinged = now
		}
		p.mu.Unlock()
		if due {
			kick(u.ping)
		}
	default:
		d.count(func(s *Stats) { s.Unexpected++ })
	}
	return nil
}

// answersDaemon says whether a message from the rendezvous answers one
// the daemon sent, and so shows that the daemon's own datagrams reach it.
// Others (a notification, a ping, an edge) can keep coming over UDP while
// nothing the daemon sends gets through (a firewall that drops only its
// outgoing UDP): the rendezvous then sends each notification again until
// it times the client out, and a daemon that took those for an answer
// would not turn to SSH for minutes.
func answersDaemon(m wire.Message) bool {
	switch m.(type) {
	case *wire.Pong, *wire.Challenge, *wire.Validated, *wire.Subscribed:
		return true
	}
	return false
}

// challengeRecheck is when a daemon that answered a Challenge sends another
// keepalive: a lost answer would otherwise cost it every delivery until
// its next keepalive (up to its interval, 25 s or more); a round trip is
// well under a second.
const challengeRecheck = time.Second

// challengeTries bounds the rechecks: at 25% loss each way one round
// (keepalive, Challenge, answer) succeeds 42% of the time, so eight leave a
// daemon unvalidated once in 80 starts, until its next keepalive.
const challengeTries = 8

// recheck sends a keepalive every challengeRecheck until the rendezvous
// says the address is validated, at most challengeTries times: each one
// from an address not yet validated brings a new Challenge.
// startRecheck runs recheck unless the address is validated or a recheck
// runs already.
func (d *Daemon) startRecheck(ctx context.Context, p *serverLink, u *udpPath) {
	p.mu.Lock()
	start := !u.validated && !u.rechecking
	if start {
		u.rechecking = true
	}
	p.mu.Unlock()
	if start {
		d.edgeWG.Go(func() { d.recheck(ctx, p, u) })
	}
}

func (d *Daemon) recheck(ctx context.Context, p *serverLink, u *udpPath) {
	defer func() {
		p.mu.Lock()
		u.rechecking = false
		p.mu.Unlock()
	}()
	t := time.NewTicker(challengeRecheck)
	defer t.Stop()
	for range challengeTries {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		done := u.validated
		p.mu.Unlock()
		if done {
			return
		}
		kick(u.ping)
	}
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// onPong takes a pong; overUDP is false for one on the stream over SSH,
// whose Observed is the stream's placeholder (100::/64), not where this
// daemon is seen on the Internet.
func (d *Daemon) onPong(p *serverLink, u *udpPath, m *wire.Pong, overUDP bool) {
	p.mu.Lock()
	k, ok := u.matching(m.Counter)
	repos := k.repos
	if !ok || len(m.Statuses) != len(repos) {
		p.mu.Unlock()
		d.log.Debug("pong matches no recent keepalive", "server", u.addr, "counter", m.Counter)
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	changed := overUDP && u.observed != m.Observed
	if overUDP {
		u.observed = m.Observed
	}
	u.lastPong = time.Now()
	if k.standby {
		// A standby path's pong says that it works, and where the
		// rendezvous sees this daemon on it: nothing about positions.
		p.mu.Unlock()
		if changed {
			d.log.Info("rendezvous sees this daemon at", "server", u.addr, "public", m.Observed, "path", "standby")
		}
		d.count(func(s *Stats) { s.Pongs++ })
		kick(u.pong)
		return
	}
	wasDenied := p.denied
	p.denied = false
	p.mu.Unlock()
	if changed {
		d.log.Info("rendezvous sees this daemon at", "server", u.addr, "public", m.Observed)
	}
	d.mu.Lock()
	d.stats.Pongs++
	dirty := false
	denied := 0
	for i, st := range m.Statuses {
		repo := repos[i]
		switch st.Status {
		case wire.StatusOK:
			rs := d.state.repo(p.key, repo)
			if !rs.Known {
				rs.Known, rs.LastSeq = true, st.Position // a new follower starts where the server says
				dirty = true
			}
		case wire.StatusNotAuthorised:
			denied++
			d.log.Warn("rendezvous refuses this repository: this key is not registered for it (register over SSH with gcn-heartbeat, or run the rendezvous with --open)",
				"server", p.server().Addr, "repo", repo, "client", d.pub.String())
		default:
			denied++
			d.log.Warn("rendezvous does not know this repository", "server", p.server().Addr, "repo", repo)
		}
	}
	if dirty {
		d.saveLocked()
	}
	d.mu.Unlock()
	if denied == len(m.Statuses) {
		p.mu.Lock()
		p.denied = true
		p.mu.Unlock()
		if !wasDenied {
			d.log.Warn("every repository was refused; retrying slowly", "every", DeniedRetry)
		}
	}
	kick(u.pong)
}
