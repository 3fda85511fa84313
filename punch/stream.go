package punch

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Streams over SSH. Some networks drop all UDP. When a rendezvous owes the
// daemon an answer over UDP (a keepalive that wants a pong went out) and
// nothing has come from it over UDP (neither its STUN nor anything sealed)
// for udpDeadAfter, the daemon opens a stream to it over SSH (`gcn-heartbeat watch`, through the clone's own ssh command) and sends
// and receives the same datagrams on it, framed. It tries UDP again every
// udpRetryOnStream; the moment the rendezvous answers over UDP, the daemon
// moves back and closes the stream, so that a daemon on a good network
// costs the server no SSH session. Exactly once, in order, is the same
// guarantee on either path and across a move: positions and acks do not
// depend on the path.

const (
	// udpDeadAfter is how long the rendezvous may leave an answer over UDP
	// owed (silence alone is normal: quiet keepalives and lifetime probes
	// want none) before the daemon turns to SSH. In that
	// time a starting daemon sends four keepalives (at 0, 1, 3 and 7 s)
	// and its STUN requests; with a quarter of packets lost each way, all
	// four round trips fail once in 27 starts, and a needless move costs
	// one SSH session until the next UDP retry moves the daemon back.
	udpDeadAfter = 8 * time.Second
	// udpRetryOnStream is how often a daemon on a stream tries UDP again:
	// one keepalive, modest beside the stream's own, and a network that
	// lets UDP through again is used within half a minute.
	udpRetryOnStream = 30 * time.Second
	// udpAnswerWait is how long a UDP retry waits for its answer. A
	// keepalive that reaches the rendezvous over UDP moves the client
	// there even if the answer cannot come back (UDP blocked one way
	// only); a keepalive on the stream then moves it back at once.
	udpAnswerWait = 3 * time.Second
	// firstStreamRetry and maxStreamRetry space the attempts when a stream
	// cannot be opened (sshd or the rendezvous down, the stream cap
	// reached): 10 s, doubling to 5 minutes, so that a server that comes
	// back is used within minutes and one that stays down is asked once
	// every 5 minutes by each client.
	firstStreamRetry = 10 * time.Second
	maxStreamRetry   = 5 * time.Minute
)

// Streamer opens a stream to one rendezvous over SSH: its first line has
// been read and was "ok". Registration over SSH provides one per server.
type Streamer func(ctx context.Context) (io.ReadWriteCloser, error)

// SetStreamer gives the daemon the way to reach a server over SSH.
func (d *Daemon) SetStreamer(server wire.Key, s Streamer) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.streamers == nil {
		d.streamers = make(map[wire.Key]Streamer)
	}
	d.streamers[server] = s
}

func (d *Daemon) streamer(server wire.Key) Streamer {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.streamers[server]
}

// linkStream is a link's open stream.
type linkStream struct {
	rwc   io.ReadWriteCloser
	wmu   sync.Mutex
	since time.Time
}

// send writes one datagram, framed.
func (ls *linkStream) send(b []byte) error {
	f, err := wire.AppendFrame(nil, b)
	if err != nil {
		return err
	}
	ls.wmu.Lock()
	defer ls.wmu.Unlock()
	_, err = ls.rwc.Write(f)
	return err
}

// onStream is the link's stream, or nil when it is on UDP.
func (p *serverLink) onStream() *linkStream {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stream
}

// heardOverUDP notes an answer from the rendezvous over UDP (see
// answersDaemon); on a stream, it is the sign to move back.
func (d *Daemon) heardOverUDP(p *serverLink) {
	now := time.Now()
	p.mu.Lock()
	p.owedSince = time.Time{}
	ls := p.stream
	p.stream = nil
	if ls != nil {
		p.pathSince = now
	}
	p.mu.Unlock()
	if ls != nil {
		d.log.Info("UDP answers again: back on UDP, stream over SSH closed", "server", p.server().Addr, "on_ssh_for", now.Sub(ls.since).Round(time.Second))
		ls.rwc.Close()
	}
}

// pathWatch turns to SSH when UDP is dead, and keeps a stream open while
// it is; the stream's reader and the UDP retries move the daemon back.
func (d *Daemon) pathWatch(ctx context.Context, p *serverLink) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	retry := firstStreamRetry
	var next, opened time.Time
	warnAt := udpDeadAfter // the silence at which the next warning is due
	for {
		select {
		case <-ctx.Done():
			if ls := p.onStream(); ls != nil {
				ls.rwc.Close() // ends its reader
			}
			return
		case <-t.C:
		}
		now := time.Now()
		p.mu.Lock()
		silent := time.Duration(0)
		if !p.owedSince.IsZero() {
			silent = now.Sub(p.owedSince)
		} else {
			warnAt = udpDeadAfter // it answered: a new silence warns afresh
		}
		on := p.stream != nil
		p.mu.Unlock()
		if on {
			continue
		}
		if !opened.IsZero() {
			// A stream ended: one that served a while may be reopened at
			// once; one that ended soon waits its turn (retry doubles), so
			// that a server that drops streams is not hammered.
			if now.Sub(opened) > time.Minute {
				retry, next = firstStreamRetry, now
			}
			opened = time.Time{}
		}
		if d.failover(p, silent, now) {
			continue // another node of the cluster, over UDP, before SSH
		}
		if silent < udpDeadAfter || now.Before(next) {
			continue
		}
		open := d.streamer(p.key)
		if open == nil {
			if silent >= warnAt {
				d.warnSilent(ctx, p, silent)
				warnAt = min(2*silent, silent+maxSilentWarnGap)
			}
			continue
		}
		d.log.Info("the rendezvous does not answer over UDP: opening a stream over SSH", "server", p.server().Addr, "silent_for", silent.Round(time.Second))
		rwc, err := open(ctx)
		next, retry = now.Add(retry), min(2*retry, maxStreamRetry)
		if err != nil {
			d.log.Warn("stream over SSH failed", "server", p.server().Addr, "retry_in", next.Sub(now), "err", err)
			continue
		}
		opened = now
		ls := &linkStream{rwc: rwc, since: time.Now()}
		p.mu.Lock()
		p.stream, p.pathSince = ls, ls.since
		p.mu.Unlock()
		d.log.Info("notifications now come over SSH", "server", p.server().Addr)
		d.edgeWG.Go(func() { d.readStream(ctx, p, ls) })
		d.edgeWG.Go(func() { d.retryUDP(ctx, p, ls) })
		d.sendKeepalive(p, p.first(), 0) // on the stream: the rendezvous moves the client there
	}
}

// maxSilentWarnGap caps the gap between warnings about a rendezvous that
// does not answer: at 8 s, 16 s, 32 s ... then every 5 minutes, so that
// the log says it while it lasts without filling up.
const maxSilentWarnGap = 5 * time.Minute

// warnSilent says why a rendezvous (with no SSH path to turn to) owes an
// answer: a STUN request tells a rendezvous that is up but drops this
// daemon's datagrams (the wrong --server-key: it cannot open them) from
// one that is not there at all.
func (d *Daemon) warnSilent(ctx context.Context, p *serverLink, silent time.Duration) {
	u := p.first()
	p.mu.Lock()
	addr := u.addr
	// Its datagrams still come, but none answers this daemon's: what
	// this daemon sends is lost (a STUN request would be too).
	oneWay := !p.owedSince.IsZero() && p.heardAt.After(p.owedSince)
	p.mu.Unlock()
	if oneWay {
		d.log.Warn("the rendezvous's datagrams arrive over UDP, but it answers none of this daemon's: its outgoing UDP is dropped (a firewall?); notifications stop once the rendezvous times it out (5 minutes); no SSH path to turn to (the daemon was given --server, not --repo)",
			"server", addr, "silent_for", silent.Round(time.Second))
		return
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := d.stun.bind(ctx, d.cfg.Conn, addr); err == nil {
		d.log.Warn("the rendezvous answers STUN but not this daemon's keepalives: --server-key is probably not its key (it is the 64 hex characters of STORE/server.pub on the server)",
			"server", addr, "silent_for", silent.Round(time.Second))
		return
	}
	d.log.Warn("the rendezvous does not answer at all (neither STUN nor keepalives): it is down, --server has the wrong address or port, or a firewall drops UDP; no SSH path to turn to (the daemon was given --server, not --repo)",
		"server", addr, "silent_for", silent.Round(time.Second))
}

// readStream hands the stream's datagrams to the daemon until it ends.
func (d *Daemon) readStream(ctx context.Context, p *serverLink, ls *linkStream) {
	r := bufio.NewReader(ls.rwc)
	buf := make([]byte, wire.MaxDatagram)
	var err error
	for {
		var b []byte
		if b, err = wire.ReadFrame(r, buf); err != nil {
			break
		}
		// Only the rendezvous speaks on its stream: anything that is not
		// a datagram sealed by it ends the stream (it is counted, as over
		// UDP, and nothing of it is taken).
		if sender, _, _, perr := wire.ParseHeader(b); perr == nil && sender != p.key {
			err = errors.New("a datagram from another key than the rendezvous's")
			d.countOpenFailure(err)
			break
		}
		if err = d.handleGCN(ctx, b, netip.AddrPort{}); err != nil {
			break
		}
	}
	ls.rwc.Close()
	p.mu.Lock()
	ended := p.stream == ls
	if ended {
		p.stream = nil
	}
	p.mu.Unlock()
	if ended && ctx.Err() == nil {
		d.log.Warn("stream over SSH ended", "server", p.server().Addr, "err", err)
	}
}

// retryUDP sends a keepalive over UDP every udpRetryOnStream while the
// stream lasts; without an answer, a keepalive on the stream follows, so
// that a keepalive that got through one way only moves nothing for long.
func (d *Daemon) retryUDP(ctx context.Context, p *serverLink, ls *linkStream) {
	for {
		if !sleepCtx(ctx, udpRetryOnStream) || p.onStream() != ls {
			return
		}
		d.sendKeepaliveVia(p, p.first(), 0, true)
		if !sleepCtx(ctx, udpAnswerWait) || p.onStream() != ls {
			return
		}
		d.sendKeepalive(p, p.first(), 0)
	}
}

// sleepCtx sleeps for dur unless ctx ends first; it reports whether it slept.
func sleepCtx(ctx context.Context, dur time.Duration) bool {
	sleepUntil(ctx, nil, dur) // a nil channel never signals
	return ctx.Err() == nil
}
