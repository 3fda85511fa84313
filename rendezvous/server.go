// Package rendezvous is the server daemon: STUN, registry, and reliable fan-out of notifications over UDP.
package rendezvous

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/rendezvous/cluster"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// Timing. Each constant says why it has its value.
const (
	// InitialRTO is the first retransmission timeout: above most Internet
	// round trips, so a healthy path never retransmits, yet a lost
	// notification costs at most a quarter of a second.
	InitialRTO = 250 * time.Millisecond
	// MaxRTO caps the exponential backoff: a client that is briefly
	// unreachable is retried at least this often until it lapses.
	MaxRTO = 8 * time.Second
	// ClientTimeout is how long a client stays live without an authenticated
	// packet. It is well above the longest keepalive interval a daemon picks
	// (120 s, the RFC 4787 REQ-5 minimum mapping lifetime), so a live client
	// never lapses; after it, retransmission stops and catch-up waits for
	// the client's next keepalive.
	ClientTimeout = 5 * time.Minute
	// RecordRefresh is how often an unchanged client record is rewritten to
	// refresh its heartbeat epoch: rare enough that 100k clients cost about
	// 170 small writes a second, often enough for `status` to be useful.
	// An address change is written at once.
	RecordRefresh = 10 * time.Minute
	// MaxProbe bounds a lifetime probe a client may ask for: a little above
	// the longest keepalive interval a daemon uses (120 s).
	MaxProbe = 150 * time.Second
	// ForgetAfter is how long a silent client's state stays in memory. Its
	// next keepalive restores it (the client reports its own position), so
	// forgetting costs nothing but keeps departed clients from piling up.
	ForgetAfter = time.Hour
	// idleWake is how long the send loop sleeps with nothing due: only a
	// safety net, since every new duty kicks it.
	idleWake = time.Minute
	// minWake keeps a burst of due work from spinning the loop.
	minWake = time.Millisecond
	// Window is how many events may be in flight to one client: enough to
	// catch up quickly after an absence, small enough not to flood its NAT.
	Window = 32
	// stunRate and stunBurst limit STUN responses per source IP.
	stunRate, stunBurst = 10, 20
	// authRecheck is how long the rendezvous trusts an authorisation it
	// read before reading its file again. Reading it on every keepalive cost
	// 7 us (3% of a core for 100k clients at 25 s); registrations last 7
	// days and are renewed daily, so the only effect is that deleting a
	// registration's file (revoking it) takes effect within this.
	authRecheck = 5 * time.Minute
	// unknownRate and unknownBurst limit, per source IP, how often a packet
	// from a key not yet seen may cost a Curve25519 precomputation.
	unknownRate, unknownBurst = 20, 40
	// newKeyRate bounds the same over all sources together:
	// a flood of random keys from thousands of forged sources (each under
	// its own limit) once cost a precomputation per datagram, 50-120 µs,
	// and starved every known client. 4000 a second is at most half a core
	// here; known clients' datagrams cost none. After a restart 100k
	// clients are all new: they are back within about 25 s (their
	// keepalives retry).
	newKeyRate = 4000
	// cookiedKeyRate is a second budget of the same
	// size, open only to new keys that echo a Busy cookie: under a flood
	// from forged sources, which never see their cookies, real newcomers
	// still get in (busy.go).
	cookiedKeyRate = 4000
	// busyRate and busyBurst bound the Busy replies: each is 20 bytes, an
	// HMAC and a send, so 20000 a second is about 0.4 MB/s and a few
	// percent of a core; past it, new keys are dropped unanswered.
	busyRate, busyBurst = 20000, 20000
)

// Config is what a Server needs. Conn is the seam in front of the network;
// Run closes every socket it was given when it returns.
type Config struct {
	Conn    udpconn.Conn
	AltConn udpconn.Conn // optional second address
	// Grid, when all four cells are set, serves RFC 5780; its [0][0] and
	// [1][1] are Conn and AltConn.
	Grid *Grid
	// Second, when set, is the rendezvous's sockets in its other address
	// family, for a rendezvous bound to a specific address in each
	// (--listen A4,A6): [0][0] its main socket, and, when all four are
	// set, RFC 5780 service in that family too.
	Second *Grid
	Store  *store.Store
	Open   bool // any key may follow any repository
	// Fanout is the arity of each repository's peer-to-peer tree; 0: the
	// rendezvous sends every notification to every client itself.
	Fanout int
	// NewKeyRate is how many keys not seen before may cost a Curve25519
	// precomputation a second, over all sources (and again with a Busy
	// cookie); 0 means newKeyRate. A small server may lower it.
	NewKeyRate float64
	// MaxStreams caps the streams over SSH it accepts; 0 means
	// DefaultMaxStreams.
	MaxStreams int
	// Cluster, when set, shares events and authorisations with other
	// nodes through NATS JetStream (scaleout.go); Advertise are the
	// addresses clients reach this node at (default: its bound ones).
	Cluster   *cluster.Cluster
	Advertise []netip.AddrPort
	Logger    *slog.Logger
}

// Stats counts what the server did; every dropped datagram is counted.
// `gcn-punch status --stats` prints it as JSON with these keys.
type Stats struct {
	STUN          uint64 `json:"stun"`          // STUN Binding answers
	STUNLimited   uint64 `json:"stun_limited"`  // STUN requests over the per-source rate
	Keepalives    uint64 `json:"keepalives"`    // accepted keepalives
	Quiet         uint64 `json:"quiet"`         // quiet keepalives left unanswered
	Acks          uint64 `json:"acks"`          // acks from live clients
	Notifies      uint64 `json:"notifies"`      // notifications sent the first time
	Retransmits   uint64 `json:"retransmits"`   // notifications sent again
	Resyncs       uint64 `json:"resyncs"`       // resync notices sent
	Pings         uint64 `json:"pings"`         // restart pings sent
	Probes        uint64 `json:"probes"`        // lifetime-probe pings sent
	Malformed     uint64 `json:"malformed"`     // datagrams that do not parse
	Forged        uint64 `json:"forged"`        // datagrams that fail authentication
	Replayed      uint64 `json:"replayed"`      // keepalives with an old counter
	Unexpected    uint64 `json:"unexpected"`    // valid messages out of place
	Denied        uint64 `json:"denied"`        // keepalives refused every repository
	Limited       uint64 `json:"limited"`       // new keys over the per-source rate
	Amplification uint64 `json:"amplification"` // replies dropped for being larger than the request
	Rebinds       uint64 `json:"rebinds"`       // client address changes
	// Delivery as it stands: when an ack last moved a subscription on (0:
	// never; once the head's acks are all in, when the last of them came),
	// and a gauge counted when asked: subscriptions whose client has not
	// yet acked its repository's head.
	LastAckUnixNano     int64 `json:"last_ack_unix_nano,omitempty"`
	SubscriptionsBehind int   `json:"subscriptions_behind"`
	// Subscriptions with preferences (subscribe.go).
	Subscribes uint64 `json:"subscribes"` // Subscribe messages taken
	Filtered   uint64 `json:"filtered"`   // events not sent to a client because its ref patterns leave them out
	// Dual-stack clients (standby.go).
	StandbyKeepalives uint64 `json:"standby_keepalives"` // keepalives on a client's standby path
	PathSwaps         uint64 `json:"path_swaps"`         // deliveries moved to a client's other address family
	Forgotten         uint64 `json:"forgotten"`          // clients dropped after ForgetAfter silent
	// Peer-to-peer fan-out (--fanout K).
	DirectFallbacks uint64 `json:"direct_fallbacks"` // tree members served directly after their deadline
	TreeJoins       uint64 `json:"tree_joins"`       // subscriptions placed in a tree
	TreeEvictions   uint64 `json:"tree_evictions"`   // members taken out for answering nobody
	Edges           uint64 `json:"edges"`            // parent-child edges made
	wire.PunchOK           // paths formed, by the remote candidate's kind
	PunchFailed     uint64 `json:"punch_failed"` // edges on which no path formed
	// Address validation (validate.go).
	Challenges uint64 `json:"challenges"` // Challenges sent to addresses not yet shown to receive
	Validated  uint64 `json:"validated"`  // addresses shown to receive
	// Under a flood of new keys (busy.go).
	Busy    uint64 `json:"busy"`    // Busy replies (a cookie) to new keys over the budget
	Cookied uint64 `json:"cookied"` // new keys let in with a valid cookie
	// For want of disk (held.go).
	Held        uint64 `json:"held"`         // events held in memory because the log could not be written
	HeldWritten uint64 `json:"held_written"` // held events written to the log since
	// Every datagram the rendezvous's sockets took in and handed out, of any kind
	// (STUN too): what a push costs it, whatever path each event took.
	// Scale-out (--cluster).
	ClusterPublished uint64 `json:"cluster_published"` // events of this node's logs published to the stream
	ClusterEvents    uint64 `json:"cluster_events"`    // events this node took from the stream before its log had them (or with no log)
	DatagramsIn      uint64 `json:"datagrams_in"`
	DatagramsOut     uint64 `json:"datagrams_out"`
}

// Server is a running rendezvous.
type Server struct {
	cfg  Config
	log  *slog.Logger
	pub  wire.Key
	priv wire.Key
	kick chan struct{}
	// cluster is its part in a cluster (scaleout.go); nil without one.
	cluster *clusterState
	mu      sync.Mutex
	// Datagram counts, kept outside mu: the socket loops add to them per batch.
	datagramsIn, datagramsOut atomic.Uint64
	// dirty holds the latest record of each client still to be written;
	// the writer drains it, so no update is ever dropped.
	dirty       map[wire.Key]store.ClientRecord
	recordsKick chan struct{}
	poked       map[string]struct{} // repositories whose log grew
	holdMu      sync.Mutex          // one Hold or write-back of held events at a time
	streams     map[*streamConn]struct{}
	nextStream  uint64
	clients     map[wire.Key]*client
	repos       map[string]*repo
	pending     subSet    // subscriptions that may owe events
	treeWaits   treeWaits // tree members given until a deadline to ack
	probes      map[probeKey]probe
	stunRL      *rateLimiter
	unkRL       *rateLimiter
	newKeys     bucket   // all sources together: see newKeyRate
	cookiedKeys bucket   // new keys with a valid cookie: see cookiedKeyRate
	busyOut     bucket   // Busy replies: see busyRate
	cookieKey   [32]byte // the secret under which Challenge cookies are made
	stats       Stats
	grids       []Grid // [0]: [0][0] Conn, [1][1] AltConn, the others for RFC 5780; [1]: Second
	pingSeq     uint64
	swept       time.Time   // last sweep for forgotten clients
	opener      wire.Opener // for handle, under mu
	sealer      wire.Sealer // for handle's replies, under mu
	closed      bool
	due         []*sub                       // sendDue's list, reused
	statuses    [wire.MaxSubs]wire.SubStatus // onKeepalive's, reused under mu
	senders     []*sender                    // one per CPU, each with its own buffers
	fan         *fanout                      // nil without --fanout
	notes       []job                        // control messages for the send loop
	// The last log line about forged datagrams, and how many came since.
	forgedLoggedAt time.Time
	forgedUnlogged uint64
}

// New loads the server keys and the event logs.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pub, priv, err := cfg.Store.ServerKeys()
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, log: cfg.Logger, pub: pub, priv: priv,
		kick:        make(chan struct{}, 1),
		dirty:       make(map[wire.Key]store.ClientRecord),
		recordsKick: make(chan struct{}, 1),
		poked:       make(map[string]struct{}),
		streams:     make(map[*streamConn]struct{}),
		clients:     make(map[wire.Key]*client),
		repos:       make(map[string]*repo),
		probes:      make(map[probeKey]probe),
		stunRL:      newRateLimiter(stunRate, stunBurst),
		unkRL:       newRateLimiter(unknownRate, unknownBurst),
	}
	if cfg.Fanout > 0 {
		if cfg.Fanout > wire.MaxFanout {
			return nil, fmt.Errorf("rendezvous: --fanout %d: at most %d", cfg.Fanout, wire.MaxFanout)
		}
		signer, err := cfg.Store.SigningKey()
		if err != nil {
			return nil, err
		}
		s.fan = &fanout{arity: cfg.Fanout, signer: signer, edges: map[uint64]*edge{}, waiting: map[uint64]*edge{}}
		copy(s.fan.signPub[:], signer.Public().(ed25519.PublicKey))
	}
	if cfg.Cluster != nil {
		s.cluster = newClusterState(cfg.Cluster)
	}
	if _, err := rand.Read(s.cookieKey[:]); err != nil {
		return nil, err
	}
	for range runtime.GOMAXPROCS(0) {
		s.senders = append(s.senders, new(sender))
	}
	var g Grid
	if cfg.Grid != nil {
		g = *cfg.Grid
		cfg.Conn, cfg.AltConn = g[0][0], g[1][1]
		s.cfg = cfg
	} else {
		g[0][0], g[1][1] = cfg.Conn, cfg.AltConn
	}
	s.grids = []Grid{g}
	if cfg.Second != nil {
		s.grids = append(s.grids, *cfg.Second)
	}
	ids, err := cfg.Store.Repos()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		// One repository's unreadable log costs that repository only.
		if _, err := s.loadRepo(id); err != nil {
			s.log.Error("cannot read event log: this repository is served from its next readable push", "repo", id, "err", err)
		}
	}
	return s, nil
}

// PublicKey is the server's public key.
func (s *Server) PublicKey() wire.Key { return s.pub }

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	st := s.stats
	for _, r := range s.repos {
		for _, su := range r.subs.list {
			if su.acked < r.head {
				st.SubscriptionsBehind++
			}
		}
	}
	s.mu.Unlock()
	st.DatagramsIn, st.DatagramsOut = s.datagramsIn.Load(), s.datagramsOut.Load()
	return st
}

// Run serves until ctx is done. It pings recently seen clients first, so a
// restarted rendezvous resumes delivery without waiting for keepalives.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var conns []udpconn.Conn
	errc := make(chan error, 4*len(s.grids))
	for gi := range s.grids {
		for ip := range 2 {
			for port := range 2 {
				if c := s.grids[gi][ip][port]; c != nil {
					conns = append(conns, c)
					wg.Go(func() { errc <- s.readLoop(gi, ip, port) })
				}
			}
		}
	}
	if s.cluster != nil {
		wg.Go(func() { s.runCluster(ctx) })
	}
	wg.Go(func() { s.recordWriter(ctx) })
	wg.Go(func() { s.heldWriter(ctx) })
	wg.Go(func() { s.pingKnownClients() })
	// No fixed tick: sleep until the earliest retransmission or probe is
	// due, or until a poke, keepalive or ack kicks the loop.
	t := time.NewTimer(idleWake)
	defer t.Stop()
	// stop ends every reader: a failed one as well as ctx's end stops them
	// all, so the deferred Wait never waits for a reader still blocked.
	stop := func(err error) error {
		s.mu.Lock()
		s.closed = true
		s.closeStreams()
		s.mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return stop(nil)
		case err := <-errc:
			return stop(err)
		case <-t.C:
		case <-s.kick:
		}
		s.loadPoked()
		next := s.sendDue()
		t.Reset(max(time.Until(next), minWake))
	}
}

func (s *Server) kickSender() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}
