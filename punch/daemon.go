// Package punch is the client's network side: one UDP socket, keepalives, STUN, and in-order exactly-once notification handling.
package punch

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
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
	Addr netip.AddrPort
	// Alt is the rendezvous's address on the other address family, if it
	// has one: the daemon keeps a path on each (paths.go).
	Alt   netip.AddrPort
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
	// Refs are git glob patterns (wire.MatchRef) for the refs whose events
	// the daemon acts on; none: every ref. The rendezvous is asked to send
	// only those (Subscribe); an older one sends all, and the daemon takes
	// the others without an action.
	Refs []string
	// NoPeer keeps the daemon out of peer-to-peer fan-out: it never
	// forwards, never takes part in hole punching, and is served by the
	// rendezvous directly.
	NoPeer bool
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
	Filtered       uint64 `json:"filtered"`        // taken without an action: --refs leaves their ref out
	Pongs          uint64 `json:"pongs"`           // answers to keepalives
	Pings          uint64 `json:"pings"`           // restart and probe pings
	KeepalivesSent uint64 `json:"keepalives_sent"` // keepalives sent, quiet ones included
	Malformed      uint64 `json:"malformed"`       // datagrams that do not parse
	Forged         uint64 `json:"forged"`          // datagrams that fail authentication
	Unexpected     uint64 `json:"unexpected"`      // valid messages out of place
	Busy           uint64 `json:"busy"`            // Busy replies: the rendezvous asked for a cookie
	// Peer-to-peer fan-out.
	Forwarded     uint64 `json:"forwarded"`      // events sent to children
	FromPeer      uint64 `json:"from_peer"`      // events taken from the parent
	PunchAttempts uint64 `json:"punch_attempts"` // edges whose paths were sought
	wire.PunchOK         // paths formed, by the remote candidate's kind
	PunchFailed   uint64 `json:"punch_failed"` // edges on which no path formed
	// A clustered rendezvous.
	NodeMoves uint64 `json:"node_moves"` // moves to another node after one stopped answering
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

	linksMu sync.RWMutex
	links   map[wire.Key]*serverLink
	runCtx  context.Context // set while Run runs, so Follow can start loops
	runWG   *sync.WaitGroup

	mu    sync.Mutex
	state *State
	stats Stats

	// Fan-out: the edges by id, the ICE machinery once needed, and the
	// goroutines forming paths.
	edgesMu sync.Mutex
	edges   map[uint64]*peerEdge
	paths   map[pathKey]*peerPath // one ICE path per peer, shared by its edges
	fan     atomic.Pointer[fanoutState]
	edgeWG  sync.WaitGroup
	// streamers open streams over SSH, by server key (under mu).
	streamers map[wire.Key]Streamer
	// forwardHook, set only by tests (export_test.go), rewrites what is
	// forwarded: a hostile parent.
	forwardHook func([]*wire.Forward) []*wire.Forward
}

// serverLink is the daemon's side of one rendezvous: keepalive state, the
// shared key, and notifications held while a gap fills. (Peers in the
// fan-out sense are other daemons.)
type serverLink struct {
	key    wire.Key
	srv    atomic.Pointer[Server] // replaced whole by Follow
	shared [32]byte
	mu     sync.Mutex
	// The UDP paths, one per address family (paths.go): the primary,
	// and the one the datagram being handled came on.
	paths            []*udpPath
	primary, heardOn *udpPath
	counter          uint64 // of the last keepalive on any path: it only grows
	denied           bool
	held             map[string]map[uint64]arrival // out-of-order events by repo and sequence number
	// signing is the rendezvous's event-signing key, from its Fanout; nat
	// what the daemon measured of its NAT toward this rendezvous.
	signing   ed25519.PublicKey
	nat       *natBehaviour
	natProbed bool
	rejoinAt  time.Time // when this daemon last asked to rejoin the trees
	// A Busy cookie, which keepalives carry while it is fresh (busy.go),
	// and when a Busy last made the daemon resend its keepalive.
	cookie               [wire.CookieLen]byte
	cookieAt, busyResent time.Time
	// The path (stream.go): the stream over SSH when UDP is dead, nil on
	// UDP; since when an answer over UDP has been owed (a keepalive that
	// wants a pong went out and nothing has come back since; zero: none),
	// and since when the link is on its path. heardAt is when anything
	// from the rendezvous last came over UDP, answer or not.
	stream                        *linkStream
	owedSince, pathSince, heardAt time.Time
	// The Subscribe (subscribe.go): the digest of the one last sent, how
	// often it was, and whether the rendezvous confirmed it.
	subscribeFor   [wire.SubscribeDigest]byte
	subscribeTries int
	subscribed     bool
	// A clustered rendezvous's nodes (nodes.go), and when the link last
	// moved between them.
	nodes   []netip.AddrPort
	movedAt time.Time
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
		links: make(map[wire.Key]*serverLink), edges: make(map[uint64]*peerEdge), paths: make(map[pathKey]*peerPath), stun: newSTUNClient(false), work: make(chan struct{}, 1)}
	for _, s := range cfg.Servers {
		if _, dup := d.links[s.Key]; dup {
			return nil, fmt.Errorf("punch: server key %s given twice", s.Key)
		}
		if err := d.Follow(s); err != nil {
			return nil, err
		}
	}
	return d, nil
}

func validServer(s Server) error {
	if !s.Addr.IsValid() {
		return fmt.Errorf("punch: server %s: no address", s.Key)
	}
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
	d.linksMu.Lock()
	defer d.linksMu.Unlock()
	if p := d.links[s.Key]; p != nil {
		cur := p.server()
		merged := Server{Addr: s.Addr, Alt: s.Alt, Key: s.Key, Repos: append([]string(nil), cur.Repos...)}
		if !merged.Alt.IsValid() && cur.Alt.IsValid() && cur.Alt.Addr().Is6() != s.Addr.Addr().Is6() {
			merged.Alt = cur.Alt // a registration over one family keeps the other
		}
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
		p.mu.Lock()
		added := p.setPaths(merged)
		prim := p.primary
		p.mu.Unlock()
		if d.runCtx != nil {
			for _, u := range added {
				d.startPath(p, u)
			}
		}
		kick(prim.ping)
		return nil
	}
	p := &serverLink{key: s.Key, shared: wire.SharedKey(s.Key, d.priv), held: map[string]map[uint64]arrival{},
		nodes: d.savedNodes(s.Key)}
	cp := s
	cp.Repos = append([]string(nil), s.Repos...)
	p.srv.Store(&cp)
	p.setPaths(cp)
	d.links[s.Key] = p
	d.rememberServer(s)
	if d.runCtx != nil {
		d.startLink(p)
	}
	return nil
}

func (p *serverLink) server() Server { return *p.srv.Load() }

func (d *Daemon) link(key wire.Key) *serverLink {
	d.linksMu.RLock()
	defer d.linksMu.RUnlock()
	return d.links[key]
}

// startLink runs a server link's loops; called with linksMu held while running.
func (d *Daemon) startLink(p *serverLink) {
	ctx := d.runCtx
	now := time.Now()
	p.mu.Lock()
	p.owedSince, p.pathSince = now, now
	p.mu.Unlock()
	for _, u := range p.paths {
		d.startPath(p, u)
	}
	d.runWG.Go(func() { d.pathWatch(ctx, p) })
}

// startPath runs a path's loops; called with linksMu held while running.
func (d *Daemon) startPath(p *serverLink, u *udpPath) {
	ctx := d.runCtx
	d.runWG.Go(func() { d.keepaliveLoop(ctx, p, u) })
	d.runWG.Go(func() { d.learnReflexive(ctx, p, u) })
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
	d.linksMu.Lock()
	d.runCtx, d.runWG = ctx, &wg
	for _, p := range d.links {
		d.startLink(p)
	}
	d.linksMu.Unlock()
	defer func() {
		d.linksMu.Lock()
		d.runCtx, d.runWG = nil, nil
		d.linksMu.Unlock()
	}()
	var err error
	select {
	case <-ctx.Done():
		d.cfg.Conn.Close() // ends the read loop
	case err = <-errc:
	}
	cancel()
	wg.Wait()
	d.closeEdges()
	d.edgeWG.Wait()
	// Stopped: leave the whole state in state.json.
	d.mu.Lock()
	if cerr := d.state.compact(d.cfg.StateDir); cerr != nil {
		d.log.Error("cannot write state.json", "err", cerr)
	}
	d.mu.Unlock()
	return err
}

// Observed is the public address the rendezvous last saw this daemon at,
// on its primary path.
func (d *Daemon) Observed(server wire.Key) netip.AddrPort {
	p := d.link(server)
	if p == nil {
		return netip.AddrPort{}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.primary.observed
}

// LocalPort is the daemon's UDP port.
func (d *Daemon) LocalPort() uint16 {
	return d.cfg.Conn.LocalAddrPort().Port()
}
