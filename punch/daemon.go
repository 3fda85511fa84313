// Package punch is the client's network side: one UDP socket, keepalives, STUN, and in-order exactly-once notification handling.
package punch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gitchat/gcn-punch/internal/control"
	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Timing. Each constant says why it has its value.
const (
	// DefaultKeepalive is below the 30 s after which many NATs (and Linux
	// conntrack's default nf_conntrack_udp_timeout) drop an idle UDP mapping.
	DefaultKeepalive = 25 * time.Second
	// firstRetry is how soon an unanswered keepalive is repeated: a lost
	// keepalive at start-up should not cost a whole interval.
	firstRetry = time.Second
	// DeniedRetry is how often a daemon the rendezvous refuses tries again:
	// slowly, because only a new registration over SSH can change the answer.
	DeniedRetry = time.Minute
	// minPingGap stops a burst of pings (e.g. replays of a captured one)
	// from turning into a burst of keepalives: one answered ping a second.
	minPingGap = time.Second
	// reorderWindow bounds how many out-of-order notifications are held
	// while waiting for a gap to fill; the server sends at most 32 at once.
	reorderWindow = 64
)

// Server is one rendezvous the daemon follows repositories on.
type Server struct {
	Addr  netip.AddrPort
	Key   wire.Key
	Repos []string
}

// Config is what a Daemon needs. Conn is the seam in front of the network;
// Run closes it when it returns.
type Config struct {
	Conn     udpconn.Conn
	Servers  []Server
	StateDir string
	// FixedKeepalive fixes the keepalive interval; zero learns it from the
	// NAT's mapping lifetime, starting at DefaultKeepalive.
	FixedKeepalive time.Duration
	// Handle runs the user's actions for one event. It is called from one
	// goroutine, in order; an event stays pending until it returns.
	Handle func(context.Context, Event)
	// Control, when set, is the path of the control socket that `gcn-punch
	// status --state` asks (see ControlSocket).
	Control string
	Logger  *slog.Logger
}

// Stats counts what the daemon saw; every dropped datagram is counted.
// `gcn-punch status --state DIR --stats` prints it as JSON with these keys.
type Stats struct {
	Notifications  uint64 `json:"notifications"`   // handled in order, the first time
	Duplicates     uint64 `json:"duplicates"`      // already handled: acked again
	Reordered      uint64 `json:"reordered"`       // arrived ahead of a gap, held
	Resyncs        uint64 `json:"resyncs"`         // resync notices handled
	Early          uint64 `json:"early"`           // notifications before the first pong
	Pongs          uint64 `json:"pongs"`           // answers to keepalives
	Pings          uint64 `json:"pings"`           // restart and probe pings
	KeepalivesSent uint64 `json:"keepalives_sent"` // keepalives sent, quiet ones included
	Malformed      uint64 `json:"malformed"`       // datagrams that do not parse
	Forged         uint64 `json:"forged"`          // datagrams that fail authentication
	Unexpected     uint64 `json:"unexpected"`      // valid messages out of place
}

// Daemon follows repositories and handles their notifications.
type Daemon struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	pub  wire.Key
	priv wire.Key
	stun *stunClient
	work chan struct{}

	peersMu sync.RWMutex
	peers   map[wire.Key]*peer
	runCtx  context.Context // set while Run runs, so Follow can start loops
	runWG   *sync.WaitGroup

	mu    sync.Mutex
	state *State
	stats Stats
}

type peer struct {
	key     wire.Key
	srv     atomic.Pointer[Server] // replaced whole by Follow
	shared  [32]byte
	pong    chan struct{} // the last keepalive was answered
	ping    chan struct{} // the server asked for a keepalive now
	probeOK chan struct{} // the probe ping arrived: the mapping survived
	// probeCounter is the counter of the keepalive whose probe is pending.
	probeCounter uint64
	interval     time.Duration
	mu           sync.Mutex
	counter      uint64
	sentFor      []string // the repositories of the last keepalive, in order
	lastSent     time.Time
	lastPong     time.Time
	// lastPinged is when a ping last made us send a keepalive.
	lastPinged time.Time
	denied     bool
	observed   netip.AddrPort
	held       map[string]map[uint64]*wire.Notify // out-of-order notifications by repo
}

// New loads the client key and state.
func New(cfg Config) (*Daemon, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Handle == nil {
		cfg.Handle = func(context.Context, Event) {}
	}
	pub, priv, err := LoadOrCreateKey(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	st, err := loadState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	// Fold the journal into state.json: this also drops a line a crash cut
	// short, which later appends would otherwise run into.
	if err := st.compact(cfg.StateDir); err != nil {
		return nil, err
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, pub: pub, priv: priv, state: st,
		peers: make(map[wire.Key]*peer), stun: newSTUNClient(false), work: make(chan struct{}, 1)}
	for _, s := range cfg.Servers {
		if _, dup := d.peers[s.Key]; dup {
			return nil, fmt.Errorf("punch: server key %s given twice", s.Key)
		}
		if err := d.Follow(s); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func validServer(s Server) error {
	if len(s.Repos) == 0 || len(s.Repos) > wire.MaxSubs {
		return fmt.Errorf("punch: server %s: follow 1 to %d repositories", s.Addr, wire.MaxSubs)
	}
	for _, r := range s.Repos {
		if err := wire.ValidRepoID(r); err != nil {
			return err
		}
	}
	return nil
}

// Follow adds a server, or merges repositories into one already followed
// (same key; the address is updated). It may be called while running: the
// new subscriptions go out in a keepalive at once.
func (d *Daemon) Follow(s Server) error {
	if err := validServer(s); err != nil {
		return err
	}
	d.peersMu.Lock()
	defer d.peersMu.Unlock()
	if p := d.peers[s.Key]; p != nil {
		cur := p.server()
		merged := Server{Addr: s.Addr, Key: s.Key, Repos: append([]string(nil), cur.Repos...)}
		for _, r := range s.Repos {
			if !slices.Contains(merged.Repos, r) {
				merged.Repos = append(merged.Repos, r)
			}
		}
		if err := validServer(merged); err != nil {
			return err
		}
		p.srv.Store(&merged)
		d.rememberServer(merged)
		kick(p.ping)
		return nil
	}
	p := &peer{key: s.Key, shared: wire.SharedKey(s.Key, d.priv), pong: make(chan struct{}, 1), ping: make(chan struct{}, 1), probeOK: make(chan struct{}, 1),
		held: map[string]map[uint64]*wire.Notify{}}
	cp := s
	cp.Repos = append([]string(nil), s.Repos...)
	p.srv.Store(&cp)
	d.peers[s.Key] = p
	d.rememberServer(s)
	if d.runCtx != nil {
		d.startPeer(p)
	}
	return nil
}

func (p *peer) server() Server { return *p.srv.Load() }

func (d *Daemon) peer(key wire.Key) *peer {
	d.peersMu.RLock()
	defer d.peersMu.RUnlock()
	return d.peers[key]
}

// startPeer runs a peer's loops; called with peersMu held while running.
func (d *Daemon) startPeer(p *peer) {
	ctx := d.runCtx
	d.runWG.Go(func() { d.keepaliveLoop(ctx, p) })
	d.runWG.Go(func() { d.learnReflexive(ctx, p) })
}

// PublicKey is the client's identity.
func (d *Daemon) PublicKey() wire.Key { return d.pub }

// Stats returns a snapshot of the counters.
func (d *Daemon) Stats() Stats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// LastSeq reports the position in one repository of one server.
func (d *Daemon) LastSeq(server wire.Key, repo string) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.state.repo(server, repo)
	return r.LastSeq, r.Known
}

// Run serves until ctx is done.
func (d *Daemon) Run(ctx context.Context) error {
	// The control socket first: a second daemon on the same state directory
	// finds it answering and stops here, before touching the network.
	var ctl net.Listener
	if d.cfg.Control != "" {
		l, err := control.Listen(d.cfg.Control)
		if err != nil {
			return fmt.Errorf("punch: %w", err)
		}
		ctl = l
		defer ctl.Close()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 1)
	wg.Go(func() { errc <- d.readLoop(ctx) })
	wg.Go(func() { d.actionWorker(ctx) })
	d.wakeWorker() // pending actions from before a restart
	if ctl != nil {
		wg.Go(func() { control.Serve(ctx, ctl, d.log, d.answerControl) })
		wg.Go(func() { <-ctx.Done(); ctl.Close() })
	}
	d.peersMu.Lock()
	d.runCtx, d.runWG = ctx, &wg
	for _, p := range d.peers {
		d.startPeer(p)
	}
	d.peersMu.Unlock()
	defer func() {
		d.peersMu.Lock()
		d.runCtx, d.runWG = nil, nil
		d.peersMu.Unlock()
	}()
	var err error
	select {
	case <-ctx.Done():
		d.cfg.Conn.Close() // ends the read loop
	case err = <-errc:
	}
	cancel()
	wg.Wait()
	// Stopped: leave the whole state in state.json.
	d.mu.Lock()
	if cerr := d.state.compact(d.cfg.StateDir); cerr != nil {
		d.log.Error("cannot write state.json", "err", cerr)
	}
	d.mu.Unlock()
	return err
}

func (d *Daemon) learnReflexive(ctx context.Context, p *peer) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	srv := p.server()
	addr, err := d.stun.bind(ctx, d.cfg.Conn, srv.Addr)
	if err != nil {
		d.log.Info("STUN: no reflexive address yet", "server", srv.Addr, "err", err)
		return
	}
	d.log.Info("STUN: reflexive address", "server", srv.Addr, "reflexive", addr)
}

// keepaliveLoop keeps the NAT mapping open and reports the daemon's position.
// An unanswered keepalive is repeated after 1 s, 2 s, 4 s ... up to the
// interval. Unless the user fixed the interval, it also learns the NAT's
// mapping lifetime (see lifetime.go) and adapts the interval to it.
func (d *Daemon) keepaliveLoop(ctx context.Context, p *peer) {
	retry := firstRetry
	search := newLifetimeSearch(d.cfg.FixedKeepalive)
	for {
		probe := search.nextProbe()
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
func (d *Daemon) awaitProbe(ctx context.Context, p *peer, x time.Duration) (survived, conclusive bool) {
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

func (d *Daemon) setInterval(p *peer, iv time.Duration) {
	p.mu.Lock()
	p.interval = iv
	p.mu.Unlock()
}

// Interval is the keepalive interval in use for a server.
func (d *Daemon) Interval(server wire.Key) time.Duration {
	p := d.peer(server)
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
func (d *Daemon) sendKeepalive(p *peer, probe time.Duration) (quiet bool) {
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
	d.send(p, m)
	return quiet
}

func (d *Daemon) send(p *peer, m wire.Message) {
	b, err := wire.Seal(nil, m, d.pub, &p.shared)
	if err != nil {
		d.log.Error("cannot seal", "err", err)
		return
	}
	// Every datagram refreshes the NAT mapping: a probe's silence counts
	// from the last one.
	p.mu.Lock()
	p.lastSent = time.Now()
	p.mu.Unlock()
	addr := p.server().Addr
	if err := udpconn.WriteTo(d.cfg.Conn, b, addr); err != nil {
		d.log.Debug("send failed", "server", addr, "err", err)
	}
}

// readBatch is how many datagrams the daemon takes from its socket at once.
const readBatch = 16

// readLoop is the only reader of the daemon's socket: it sorts what arrives
// into the answers to its own STUN requests and gcn datagrams.
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
				d.stun.handle(b)
			case wire.LooksLikeGCN(b):
				d.handleGCN(b)
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

func (d *Daemon) handleGCN(b []byte) {
	sender, _, _, err := wire.ParseHeader(b)
	if err != nil {
		d.count(func(s *Stats) { s.Malformed++ })
		return
	}
	p := d.peer(sender)
	if p == nil {
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	_, msg, err := wire.Open(b, &p.shared)
	if err != nil {
		d.count(func(s *Stats) {
			if errors.Is(err, wire.ErrAuth) {
				s.Forged++
			} else {
				s.Malformed++
			}
		})
		return
	}
	switch m := msg.(type) {
	case *wire.Pong:
		d.onPong(p, m)
	case *wire.Notify:
		if m.Recipient != d.pub {
			d.count(func(s *Stats) { s.Forged++ })
			return
		}
		d.onNotify(p, m)
	case *wire.Resync:
		if m.Recipient != d.pub {
			d.count(func(s *Stats) { s.Forged++ })
			return
		}
		d.onResync(p, m)
	case *wire.Ping:
		d.count(func(s *Stats) { s.Pings++ })
		p.mu.Lock()
		if p.probeCounter != 0 && m.Counter == p.probeCounter {
			p.probeCounter = 0
			p.mu.Unlock()
			kick(p.probeOK)
			return
		}
		now := time.Now()
		due := now.Sub(p.lastPinged) >= minPingGap
		if due {
			p.lastPinged = now
		}
		p.mu.Unlock()
		if due {
			kick(p.ping)
		}
	default:
		d.count(func(s *Stats) { s.Unexpected++ })
	}
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (d *Daemon) onPong(p *peer, m *wire.Pong) {
	p.mu.Lock()
	repos := p.sentFor
	if m.Counter != p.counter || len(m.Statuses) != len(repos) {
		p.mu.Unlock()
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	changed := p.observed != m.Observed
	p.observed = m.Observed
	p.lastPong = time.Now()
	wasDenied := p.denied
	p.denied = false
	p.mu.Unlock()
	if changed {
		d.log.Info("rendezvous sees this daemon at", "server", p.server().Addr, "public", m.Observed)
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
	kick(p.pong)
}

func (d *Daemon) saveLocked() {
	if err := d.state.save(d.cfg.StateDir); err != nil {
		d.log.Error("cannot save state; acknowledgements withheld", "err", err)
	}
}

func (d *Daemon) follows(p *peer, repo string) bool {
	return slices.Contains(p.server().Repos, repo)
}

// onNotify handles notifications in order, exactly once: the position and
// the pending action are saved before the ack leaves.
func (d *Daemon) onNotify(p *peer, n *wire.Notify) {
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
		kick(p.ping)
		return
	}
	switch {
	case n.Seq <= rs.LastSeq:
		d.stats.Duplicates++
		last := rs.LastSeq
		d.mu.Unlock()
		d.send(p, &wire.Ack{RepoID: n.RepoID, Seq: last})
		return
	case n.Seq > rs.LastSeq+1:
		d.stats.Reordered++
		d.mu.Unlock()
		p.mu.Lock()
		h := p.held[n.RepoID]
		if h == nil {
			h = map[uint64]*wire.Notify{}
			p.held[n.RepoID] = h
		}
		if len(h) < reorderWindow {
			h[n.Seq] = n
		}
		p.mu.Unlock()
		return
	}
	// In order: take it and whatever held notifications now follow it.
	p.mu.Lock()
	h := p.held[n.RepoID]
	for next := n; next != nil; {
		rs.LastSeq = next.Seq
		d.stats.Notifications++
		d.state.Pending = append(d.state.Pending, Event{ServerKey: p.key.String(), Repo: next.RepoID, Ref: next.Ref,
			Old: next.Old, New: next.New, Seq: next.Seq, TimeMilli: next.TimeMilli})
		delete(h, next.Seq)
		next = h[next.Seq+1]
	}
	for seq := range h {
		if seq <= rs.LastSeq {
			delete(h, seq)
		}
	}
	p.mu.Unlock()
	d.commitLocked(p, n.RepoID, rs.LastSeq)
}

// commitLocked saves the state, releases mu, and only then acks and wakes
// the action worker: nothing is acknowledged that a crash could lose.
func (d *Daemon) commitLocked(p *peer, repo string, seq uint64) {
	err := d.state.save(d.cfg.StateDir)
	d.mu.Unlock()
	if err != nil {
		d.log.Error("cannot save state; not acknowledging", "err", err)
		return
	}
	d.send(p, &wire.Ack{RepoID: repo, Seq: seq})
	d.wakeWorker()
}

func (d *Daemon) onResync(p *peer, m *wire.Resync) {
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

// Observed is the public address the rendezvous last saw this daemon at.
func (d *Daemon) Observed(server wire.Key) netip.AddrPort {
	p := d.peer(server)
	if p == nil {
		return netip.AddrPort{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.observed
}

// ErrServerKeyChanged is returned when a server offers a key other than the
// one pinned at first registration.
var ErrServerKeyChanged = errors.New("punch: SERVER KEY CHANGED")

// Pin checks key against the key pinned for server, pinning it on first
// use. A different key is refused, loudly, as ssh refuses a changed host key.
func (d *Daemon) Pin(server string, key wire.Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state.Pins == nil {
		d.state.Pins = map[string]string{}
	}
	old, ok := d.state.Pins[server]
	if ok && old != key.String() {
		return fmt.Errorf("%w for %s: pinned %s, now offered %s. Someone may be impersonating the server, or its key was replaced. If the change is expected, stop the daemon, delete the pin for %s from %s and start it",
			ErrServerKeyChanged, server, old, key, server, filepath.Join(d.cfg.StateDir, "state.json"))
	}
	if ok {
		return nil
	}
	d.state.Pins[server] = key.String()
	return d.state.save(d.cfg.StateDir)
}

// LocalPort is the daemon's UDP port.
func (d *Daemon) LocalPort() uint16 {
	return d.cfg.Conn.LocalAddrPort().Port()
}

// rememberServer records the server's address in the state for `probe`.
func (d *Daemon) rememberServer(s Server) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.state.Rendezvous == nil {
		d.state.Rendezvous = map[string]string{}
	}
	if d.state.Rendezvous[s.Key.String()] == s.Addr.String() {
		return
	}
	d.state.Rendezvous[s.Key.String()] = s.Addr.String()
	d.saveLocked()
}
