// Package rendezvous is the server daemon: STUN, registry, and reliable fan-out of notifications over UDP.
package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
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
)

// Config is what a Server needs. Conn is the seam in front of the network;
// Run closes every socket it was given when it returns.
type Config struct {
	Conn    udpconn.Conn
	AltConn udpconn.Conn // optional second address
	// Grid, when all four cells are set, serves RFC 5780; its [0][0] and
	// [1][1] are Conn and AltConn.
	Grid   *Grid
	Store  *store.Store
	Open   bool // any key may follow any repository
	Logger *slog.Logger
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
	Forgotten     uint64 `json:"forgotten"`     // clients dropped after ForgetAfter silent
}

// Server is a running rendezvous.
type Server struct {
	cfg  Config
	log  *slog.Logger
	pub  wire.Key
	priv wire.Key
	kick chan struct{}
	mu   sync.Mutex
	// dirty holds the latest record of each client still to be written;
	// the writer drains it, so no update is ever dropped.
	dirty       map[wire.Key]store.ClientRecord
	recordsKick chan struct{}
	poked       map[string]struct{} // repositories whose log grew
	clients     map[wire.Key]*client
	repos       map[string]*repo
	pending     subSet // subscriptions that may owe events
	probes      map[*client]probe
	stunRL      *rateLimiter
	unkRL       *rateLimiter
	stats       Stats
	grid        Grid // [0][0] Conn, [1][1] AltConn, the others for RFC 5780
	pingSeq     uint64
	swept       time.Time   // last sweep for forgotten clients
	opener      wire.Opener // for handle, under mu
	sealer      wire.Sealer // for handle's replies, under mu
	closed      bool
	due         []*sub                       // sendDue's list, reused
	statuses    [wire.MaxSubs]wire.SubStatus // onKeepalive's, reused under mu
	senders     []*sender                    // one per CPU, each with its own buffers
}

// client is one live client. It is kept small (160 bytes): the rendezvous
// holds one per registered client, 100k of them in the benchmark.
type client struct {
	key      wire.Key
	shared   [32]byte
	addr     netip.AddrPort
	conn     udpconn.Conn // the socket the client talks to
	lastSeen int64        // unix nanoseconds of its last authenticated packet
	counter  uint64
	written  int64  // unix nanoseconds: when its record was last written
	subs     []*sub // at most wire.MaxSubs: a slice is smaller than a map
}

// since is how long before now the unix-nanosecond time t was.
func since(now time.Time, t int64) time.Duration { return time.Duration(now.UnixNano() - t) }

// probe is a pending lifetime probe: ping with counter once the client has
// been silent for after.
type probe struct {
	after   time.Duration
	counter uint64
}

// sub finds the client's subscription to a repository.
func (c *client) sub(repoID string) *sub {
	for _, su := range c.subs {
		if su.r.id == repoID {
			return su
		}
	}
	return nil
}

type sub struct {
	c *client
	r *repo
	// at is where it sits in the subSets it can be in (see subSet).
	at       [2]int
	acked    uint64 // the client handled every event up to here
	sent     uint64 // highest seq sent in the current window
	nextSend int64  // unix nanoseconds: when the window is sent again
	// The authorisation last read for this subscription: its expiry (unix
	// seconds) and when it was read (unix nanoseconds).
	authExpiry, authRead int64
	rto                  time.Duration
}

type repo struct {
	id     string
	events []store.Event // the log's events, in order; events[i].Seq == first+i
	head   uint64
	offset int64 // bytes of the log file read so far
	ino    uint64
	// subs are the repository's followers: a subSet, so that a follower
	// costs 8 bytes here and a poke's scan walks an array.
	subs subSet
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
		clients:     make(map[wire.Key]*client),
		repos:       make(map[string]*repo),
		probes:      make(map[*client]probe),
		stunRL:      newRateLimiter(stunRate, stunBurst),
		unkRL:       newRateLimiter(unknownRate, unknownBurst),
	}
	for range runtime.GOMAXPROCS(0) {
		s.senders = append(s.senders, new(sender))
	}
	if cfg.Grid != nil {
		s.grid = *cfg.Grid
		cfg.Conn, cfg.AltConn = s.grid[0][0], s.grid[1][1]
		s.cfg = cfg
	} else {
		s.grid[0][0], s.grid[1][1] = cfg.Conn, cfg.AltConn
	}
	ids, err := cfg.Store.Repos()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if _, err := s.loadRepo(id); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// PublicKey is the server's public key.
func (s *Server) PublicKey() wire.Key { return s.pub }

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Run serves until ctx is done. It pings recently seen clients first, so a
// restarted rendezvous resumes delivery without waiting for keepalives.
func (s *Server) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var conns []udpconn.Conn
	errc := make(chan error, 4)
	for ip := range 2 {
		for port := range 2 {
			if c := s.grid[ip][port]; c != nil {
				conns = append(conns, c)
				wg.Go(func() { errc <- s.readLoop(ip, port) })
			}
		}
	}
	wg.Go(func() { s.recordWriter(ctx) })
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

// handle processes one datagram that arrived on grid cell (ip, port) and
// returns the reply to send back from that cell, if any. A STUN answer that
// must leave from another cell or go elsewhere is sent here.
func (s *Server) handle(ip, port int, b []byte, src netip.AddrPort) []byte {
	conn := s.grid[ip][port]
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if wire.LooksLikeSTUN(b) {
		if !s.stunRL.allow(src.Addr(), now) {
			s.stats.STUNLimited++
			return nil
		}
		resp, fromIP, fromPort, to := stunAnswer(&s.grid, ip, port, b, src)
		if resp == nil {
			s.stats.Malformed++
			return nil
		}
		s.stats.STUN++
		if fromIP == ip && fromPort == port && to == src {
			return resp
		}
		udpconn.WriteTo(s.grid[fromIP][fromPort], resp, to)
		return nil
	}
	sender, _, _, err := wire.ParseHeader(b)
	if err != nil {
		s.stats.Malformed++
		return nil
	}
	c := s.clients[sender]
	var shared [32]byte
	if c != nil {
		shared = c.shared
	} else {
		// Precomputing a key for an unseen sender is the expensive step:
		// limit it per source so a flood of random keys cannot burn the CPU.
		if !s.unkRL.allow(src.Addr(), now) {
			s.stats.Limited++
			return nil
		}
		shared = wire.SharedKey(sender, s.priv)
	}
	_, msg, err := s.opener.Open(b, &shared)
	switch {
	case errors.Is(err, wire.ErrAuth):
		s.stats.Forged++
		return nil
	case err != nil:
		s.stats.Malformed++
		return nil
	}
	switch m := msg.(type) {
	case *wire.Keepalive:
		return s.onKeepalive(conn, c, sender, shared, m, src, len(b), now)
	case *wire.Ack:
		if c == nil {
			s.stats.Unexpected++ // acks only make sense from a live client
			return nil
		}
		s.onAck(c, m, now)
	default:
		s.stats.Unexpected++
	}
	return nil
}

func (s *Server) onKeepalive(conn udpconn.Conn, c *client, key wire.Key, shared [32]byte, m *wire.Keepalive, src netip.AddrPort, reqLen int, now time.Time) []byte {
	if c != nil && m.Counter <= c.counter {
		s.stats.Replayed++ // a replayed keepalive must never move the client's address
		return nil
	}
	statuses := s.statuses[:len(m.Subs)]
	clear(statuses)
	allowed := 0
	for i, sb := range m.Subs {
		if !s.authorised(c, sb.RepoID, key, now) {
			statuses[i] = wire.SubStatus{Status: wire.StatusNotAuthorised}
			continue
		}
		allowed++
	}
	if allowed == 0 && c == nil {
		// Not registered for anything: keep no state, answer with the
		// (smaller) pong so the daemon can log why.
		s.stats.Denied++
		return s.seal(&wire.Pong{Counter: m.Counter, Observed: src, Statuses: statuses}, key, &shared, reqLen)
	}
	s.stats.Keepalives++
	// A quiet keepalive is answered only with news for the client.
	news := !m.Quiet || m.ProbeMillis > 0 || allowed < len(m.Subs)
	if c == nil {
		news = true
		c = &client{key: key, shared: shared, addr: src, conn: conn}
		s.clients[key] = c
		s.log.Info("client up", "client", key.String()[:16], "addr", src)
		s.queueRecord(c, now)
	} else if c.addr != src {
		s.stats.Rebinds++
		news = true
		s.log.Info("client address changed (NAT rebinding)", "client", key.String()[:16], "from", c.addr, "to", src)
		c.addr = src
		c.conn = conn
		s.queueRecord(c, now)
	} else if since(now, c.written) >= RecordRefresh {
		s.queueRecord(c, now)
	}
	c.counter = m.Counter
	c.lastSeen = now.UnixNano()
	if m.ProbeMillis > 0 {
		s.probes[c] = probe{after: min(time.Duration(m.ProbeMillis)*time.Millisecond, MaxProbe), counter: m.Counter}
		s.kickSender()
	} else {
		delete(s.probes, c)
	}
	for i, sb := range m.Subs {
		if statuses[i].Status != wire.StatusOK {
			continue
		}
		r := s.repo(sb.RepoID)
		su := c.sub(sb.RepoID)
		if su == nil {
			// A new follower starts at the head: no history replay. A fresh
			// client whose earlier pong was lost keeps the start it was given.
			su = &sub{c: c, r: r, rto: InitialRTO, acked: r.head}
			c.subs = append(c.subs, su)
			r.subs.add(su)
			news = true
		}
		if !sb.Known {
			news = true // the client learns where it starts from the pong
		} else {
			// The client's own report is the truth about what it handled.
			su.acked = min(sb.LastSeq, r.head)
		}
		su.sent = su.acked
		statuses[i] = wire.SubStatus{Status: wire.StatusOK, Position: su.acked}
		if su.acked < r.head {
			su.rto = InitialRTO
			s.pending.add(su)
			s.kickSender()
		}
	}
	if !news {
		s.stats.Quiet++
		return nil
	}
	return s.seal(&wire.Pong{Counter: m.Counter, Observed: src, Statuses: statuses}, key, &shared, reqLen)
}

// authorised says whether key may follow repoID now. A subscription keeps
// the authorisation it read for authRecheck; otherwise the file is read.
func (s *Server) authorised(c *client, repoID string, key wire.Key, now time.Time) bool {
	if s.cfg.Open {
		return true
	}
	var su *sub
	if c != nil {
		su = c.sub(repoID)
	}
	if su != nil && since(now, su.authRead) < authRecheck {
		return now.Unix() < su.authExpiry
	}
	exp, ok := s.cfg.Store.AuthExpiry(repoID, key)
	if su != nil {
		su.authRead, su.authExpiry = now.UnixNano(), 0
		if ok {
			su.authExpiry = exp.Unix()
		}
	}
	return ok && now.Before(exp)
}

func (s *Server) onAck(c *client, m *wire.Ack, now time.Time) {
	su := c.sub(m.RepoID)
	if su == nil {
		s.stats.Unexpected++
		return
	}
	s.stats.Acks++
	c.lastSeen = now.UnixNano()
	if m.Seq <= su.acked || m.Seq > su.r.head {
		return // duplicate or stale ack
	}
	su.acked = m.Seq
	su.sent = max(su.sent, su.acked)
	// Progress: restart the timer for whatever is still in flight.
	su.rto = InitialRTO
	su.nextSend = now.Add(su.rto).UnixNano()
	if su.acked < su.r.head {
		s.pending.add(su)
		s.kickSender()
	} else {
		s.pending.remove(su)
	}
}

// seal encodes a reply, refusing (and counting) any that would be larger
// than the request that caused it.
func (s *Server) seal(m wire.Message, to wire.Key, shared *[32]byte, reqLen int) []byte {
	b, err := s.sealer.Seal(nil, m, s.pub, shared)
	if err != nil {
		return nil
	}
	if len(b) > reqLen {
		s.stats.Amplification++
		return nil
	}
	return b
}

func (s *Server) kickSender() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *Server) repo(id string) *repo {
	r := s.repos[id]
	if r == nil {
		r = &repo{id: id, subs: subSet{slot: repoSlot}}
		s.repos[id] = r
	}
	return r
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
	due := s.due[:0]
	// Backwards, so that removing (which moves the last one here) is safe.
	for i := len(s.pending.list) - 1; i >= 0; i-- {
		su := s.pending.list[i]
		if su.acked >= su.r.head {
			s.pending.remove(su)
			continue
		}
		if since(now, su.c.lastSeen) > ClientTimeout {
			// Lapsed: stop retransmitting; its next keepalive resumes catch-up.
			s.pending.remove(su)
			continue
		}
		due = append(due, su)
	}
	s.due = due
	for c, pr := range s.probes {
		if due := time.Unix(0, c.lastSeen).Add(pr.after); now.Before(due) {
			if due.Before(next) {
				next = due
			}
			continue
		}
		delete(s.probes, c)
		probes = append(probes, job{conn: c.conn, to: c.addr, c: c, msg: &wire.Ping{Counter: pr.counter}})
		s.stats.Probes++
	}
	s.mu.Unlock()
	if len(probes) > 0 {
		s.senders[0].sealAndSend(s, probes)
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

// subSet is a set of subscriptions with constant-time add and remove and a
// dense list to scan: no hash table, which a 100k fan-out's adds, removals
// and scans would otherwise spend their time in. Each member keeps 1 + its
// index in list (0: absent) in su.at[slot], so a subscription can be in
// one set of each slot at once. Called with mu held.
type subSet struct {
	list []*sub
	slot int
}

// The subSet slots: the server's pending set, and a repository's followers.
const (
	pendingSlot = iota
	repoSlot
)

func (set *subSet) add(su *sub) {
	if su.at[set.slot] == 0 {
		set.list = append(set.list, su)
		su.at[set.slot] = len(set.list)
	}
}

// remove moves the last member into su's place.
func (set *subSet) remove(su *sub) {
	i := su.at[set.slot] - 1
	if i < 0 {
		return
	}
	n := len(set.list) - 1
	last := set.list[n]
	set.list[i], last.at[set.slot] = last, i+1
	set.list[n] = nil
	set.list = set.list[:n]
	su.at[set.slot] = 0
}

// forgetSilent drops clients silent for ForgetAfter. Called with mu held.
func (s *Server) forgetSilent(now time.Time) {
	for k, c := range s.clients {
		if since(now, c.lastSeen) < ForgetAfter {
			continue
		}
		for _, su := range c.subs {
			su.r.subs.remove(su)
			s.pending.remove(su)
		}
		delete(s.probes, c)
		delete(s.clients, k)
		s.stats.Forgotten++
	}
}

// appendDue seals what one subscription owes now: a resync notice if what
// the client needs fell out of retention, new events that fit the window,
// or, when the timer has expired, the whole window again.
func (s *Server) appendDue(out []job, su *sub, now time.Time) []job {
	r, c := su.r, su.c
	first := r.head + 1
	if len(r.events) > 0 {
		first = r.events[0].Seq
	}
	inFlight := su.sent > su.acked
	expired := inFlight && now.UnixNano() >= su.nextSend
	if su.acked+1 < first {
		if inFlight && !expired {
			return out
		}
		out = append(out, job{conn: c.conn, to: c.addr, c: c, msg: &wire.Resync{HeadSeq: r.head, FirstSeq: first, TimeMilli: now.UnixMilli(), Recipient: c.key, RepoID: r.id}})
		s.stats.Resyncs++
		su.sent = r.head
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
	for seq := from; seq <= end; seq++ {
		// The event is immutable, and loading more of the log never moves
		// it: the sender may read it outside the lock.
		out = append(out, job{conn: c.conn, to: c.addr, c: c, r: r, ev: &r.events[seq-first]})
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

// Poke tells the server that a repository's log has grown. The hook calls it
// through the control socket; it only notes the repository and wakes the
// send loop, so the hook never waits for a large fan-out.
func (s *Server) Poke(repoID string) error {
	if err := wire.ValidRepoID(repoID); err != nil {
		return err
	}
	s.mu.Lock()
	s.poked[repoID] = struct{}{}
	s.mu.Unlock()
	s.kickSender()
	return nil
}

// loadPoked reads the logs that grew and marks their followers due.
func (s *Server) loadPoked() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id := range s.poked {
		delete(s.poked, id)
		r, err := s.loadRepo(id)
		if err != nil {
			s.log.Error("cannot read event log", "repo", id, "err", err)
			continue
		}
		for _, su := range r.subs.list {
			if su.acked < r.head {
				s.pending.add(su)
			}
		}
	}
}

// loadRepo reads what is new in a repository's log; it re-reads the whole
// log when the file was replaced by compaction. Called with mu held, or
// before Run.
func (s *Server) loadRepo(id string) (*repo, error) {
	r := s.repo(id)
	f, err := os.Open(s.cfg.Store.LogPath(id))
	if errors.Is(err, os.ErrNotExist) {
		return r, nil
	}
	if err != nil {
		return r, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return r, err
	}
	ino := inode(fi)
	if ino != r.ino || fi.Size() < r.offset {
		r.ino, r.offset, r.events = ino, 0, nil
	}
	if _, err := f.Seek(r.offset, 0); err != nil {
		return r, err
	}
	evs, n, err := store.ReadEvents(f, r.head)
	if err != nil {
		return r, fmt.Errorf("rendezvous: log of %s: %w", id, err)
	}
	r.offset += n
	for _, e := range evs {
		if len(r.events) > 0 && e.Seq != r.events[len(r.events)-1].Seq+1 {
			r.events = nil // a gap: keep only what is contiguous
		}
		r.events = append(r.events, e)
	}
	if len(r.events) > 0 {
		r.head = r.events[len(r.events)-1].Seq
	}
	return r, nil
}

// queueRecord schedules a client's record to be written. Called with mu held.
func (s *Server) queueRecord(c *client, now time.Time) {
	c.written = now.UnixNano()
	s.dirty[c.key] = store.ClientRecord{ID: c.key, Heartbeat: now, Addr: c.addr}
	select {
	case s.recordsKick <- struct{}{}:
	default:
	}
}

// recordWriter writes client records off the packet path, the latest of
// each client, in batches.
func (s *Server) recordWriter(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.recordsKick:
		}
		s.mu.Lock()
		batch := s.dirty
		s.dirty = make(map[wire.Key]store.ClientRecord)
		s.mu.Unlock()
		for _, r := range batch {
			if err := s.cfg.Store.WriteClient(r); err != nil {
				s.log.Error("cannot write client record", "err", err)
			}
			if ctx.Err() != nil {
				return
			}
		}
	}
}

// pingKnownClients asks every client whose record is recent to send a
// keepalive now, so that after a restart delivery resumes at once.
func (s *Server) pingKnownClients() {
	recs, bad, err := s.cfg.Store.Clients()
	if err != nil {
		s.log.Warn("cannot list client records", "err", err)
		return
	}
	for _, name := range bad {
		s.log.Warn("malformed client record", "file", name)
	}
	now := time.Now()
	for _, r := range recs {
		// A record older than this is behind a NAT mapping that is long gone.
		if !r.Recent(now) {
			continue
		}
		shared := wire.SharedKey(r.ID, s.priv)
		s.mu.Lock()
		s.pingSeq++
		b, err := wire.Seal(nil, &wire.Ping{Counter: s.pingSeq}, s.pub, &shared)
		s.stats.Pings++
		s.mu.Unlock()
		if err == nil {
			udpconn.WriteTo(s.cfg.Conn, b, r.Addr)
		}
	}
}

// ClientStatus is one row of `gcn-punch status`.
type ClientStatus struct {
	ID       string            `json:"id"`
	Addr     string            `json:"address"`
	LastSeen time.Time         `json:"last_seen"`
	Acked    map[string]uint64 `json:"last_acked_seq"`
}

// Clients reports the live registry.
func (s *Server) Clients() []ClientStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ClientStatus, 0, len(s.clients))
	for _, c := range s.clients {
		cs := ClientStatus{ID: c.key.String(), Addr: c.addr.String(), LastSeen: time.Unix(0, c.lastSeen), Acked: map[string]uint64{}}
		for _, su := range c.subs {
			cs.Acked[su.r.id] = su.acked
		}
		out = append(out, cs)
	}
	return out
}
