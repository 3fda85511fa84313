// Package bench measures the rendezvous and the whole loop: fan-out, latency, memory and keepalive cost.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// LoadgenOptions configure one load-generator process: Clients simulated
// daemons, each with its own key and UDP socket, speaking the real protocol.
type LoadgenOptions struct {
	Server    netip.AddrPort
	ServerKey wire.Key
	Repo      string
	Clients   int
	// FirstIP is the first loopback address clients bind to; PerIP clients
	// share one address. Spreading clients over many 127.x addresses avoids
	// the ~28k ephemeral ports of one address, and the rendezvous's
	// per-source limit on new keys (a real deployment's clients come from
	// many addresses).
	FirstIP netip.Addr
	PerIP   int
	// Keepalive, when set, makes every client send keepalives at this
	// interval, spread evenly, once Start is closed.
	Keepalive time.Duration
	Start     <-chan struct{}
	// Workers is how many threads serve the clients' sockets (default 1;
	// the bench gives a generator that simulates every client one per
	// core).
	Workers int
	// Peer makes the clients take part in fan-out trees (see peer.go).
	Peer bool
	// RegisterRate, when set, paces the first registrations to this many a
	// second: each costs the rendezvous a Curve25519 precomputation and
	// brings a Challenge, its answer and a keepalive a second later, and
	// several generators register at once.
	RegisterRate int
	// Echo makes the clients the floor's echoers instead (see floor.go):
	// no protocol and no crypto, each datagram answered with one of an
	// ack's size.
	Echo bool
}

// Report lines the generator writes on stdout, one JSON object each.
type genEvent struct {
	Event string `json:"event"`           // "registered", "notified", "error"
	Count int    `json:"count,omitempty"` // clients concerned
	// LastUnixNano is when the last of them got there (notified: received
	// the notification and sent its ack).
	LastUnixNano int64  `json:"last_unix_nano,omitempty"`
	Err          string `json:"err,omitempty"`
}

// simClient is one simulated daemon. Its socket is a raw non-blocking file
// descriptor served by an epoll loop rather than a goroutine: with 100k
// clients on the same two cores as the rendezvous, a goroutine and netpoller
// round trip per datagram would cost the generator more CPU than the server
// it measures, and the fan-out time would mostly time the generator.
type simClient struct {
	fd       int
	pub      wire.Key
	priv     wire.Key
	shared   [32]byte
	peer     *simPeer // with LoadgenOptions.Peer
	counter  atomic.Uint64
	lastSeq  atomic.Uint64
	ponged   atomic.Bool  // the rendezvous answered its first keepalive
	linked   atomic.Bool  // it was given a tree edge (with LoadgenOptions.Peer)
	counted  atomic.Bool  // counted as registered
	lastPong atomic.Int64 // unix nanos
	notified atomic.Int64 // unix nanos of the first notification
}

const (
	// epollWait bounds how long a worker blocks, so it notices ctx ending.
	epollWait = 100 // ms
	// coalesceWait is how long a worker pauses after a partial batch, so the
	// next epoll_wait returns many datagrams at once. A worker asleep in
	// epoll_wait is woken by every datagram, and on loopback the sender
	// pays for that wakeup: without the pause, waking the generator's
	// threads was 11% of the rendezvous's CPU in a 100k fan-out, a cost that
	// 100k real clients on their own machines would not put on it. It
	// delays a simulated ack by at most this.
	coalesceWait = 3 * time.Millisecond
)

// Loadgen runs until ctx ends, reporting on out.
func Loadgen(ctx context.Context, o LoadgenOptions, out io.Writer) error {
	enc := json.NewEncoder(out)
	var encMu sync.Mutex
	emit := func(e genEvent) {
		encMu.Lock()
		enc.Encode(e)
		encMu.Unlock()
	}
	if o.PerIP <= 0 {
		o.PerIP = 25
	}
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if !o.Server.Addr().Is4() || !o.FirstIP.Is4() {
		return errors.New("loadgen: IPv4 addresses only")
	}
	g := &generator{o: o, dst: syscall.SockaddrInet4{Port: int(o.Server.Port()), Addr: o.Server.Addr().As4()}}
	defer g.close()
	epfds := make([]int, o.Workers)
	for w := range epfds {
		fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
		if err != nil {
			return fmt.Errorf("loadgen: epoll: %w", err)
		}
		epfds[w] = fd
		g.closers = append(g.closers, fd)
	}
	ip := o.FirstIP
	g.clients = make([]*simClient, o.Clients)
	for i := range g.clients {
		if i > 0 && i%o.PerIP == 0 {
			ip = ip.Next()
		}
		fd, err := udpSocket(ip)
		if err != nil {
			return fmt.Errorf("loadgen: client %d on %s: %w", i, ip, err)
		}
		g.closers = append(g.closers, fd)
		pub, priv, err := wire.GenerateKey()
		if err != nil {
			return err
		}
		g.clients[i] = &simClient{fd: fd, pub: pub, priv: priv, shared: wire.SharedKey(o.ServerKey, priv)}
		if o.Peer {
			g.clients[i].peer = &simPeer{}
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(i)} // the data word carries the client's index
		if err := syscall.EpollCtl(epfds[i%o.Workers], syscall.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return fmt.Errorf("loadgen: epoll add: %w", err)
		}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, ep := range epfds {
		wg.Go(func() { g.serve(ctx, ep) })
	}

	// Register: a keepalive from each, repeated until it is answered (and,
	// taking part in fan-out, the offer too). Closed loop: each chunk of
	// registrations waits, a bounded time, for the one before to be
	// answered, so that the rendezvous's socket buffer is not flooded
	// whatever its speed (several generators register at once).
	reg := g.newWorker()
	const regChunk = 500
	paceStart, paced := time.Now(), 0
	for round := 0; g.registered.Load() < int64(o.Clients); round++ {
		if round > 20 || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d clients registered", g.registered.Load(), o.Clients)
		}
		for i, c := range g.clients {
			if !c.counted.Load() {
				if o.Echo {
					syscall.Sendto(c.fd, []byte{echoHello}, 0, &reg.dst)
				} else {
					reg.keepalive(c, c.ponged.Load(), false) // asking for a pong, which carries the fan-out offer
				}
				if paced++; o.RegisterRate > 0 && paced%50 == 0 {
					if d := time.Until(paceStart.Add(time.Duration(paced) * time.Second / time.Duration(o.RegisterRate))); d > 0 {
						time.Sleep(d)
					}
				}
			}
			if i%regChunk == regChunk-1 {
				wait := time.Now().Add(2 * time.Second)
				for g.registered.Load() < int64(i+1-regChunk) && time.Now().Before(wait) {
					time.Sleep(time.Millisecond)
				}
			}
		}
		deadline := time.Now().Add(2 * time.Second)
		for g.registered.Load() < int64(o.Clients) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	emit(genEvent{Event: "registered", Count: o.Clients, LastUnixNano: g.lastReg.Load()})
	// Steady state, as after days of running: each client last asked for a
	// pong at a different point of the PongRefresh cycle, so the share of
	// keepalives that ask is what it is in the long run, not zero (every
	// client just got its registration pong) or all at once.
	now := time.Now()
	for i, c := range g.clients {
		c.lastPong.Store(now.Add(-time.Duration(i) * wire.PongRefresh / time.Duration(len(g.clients))).UnixNano())
	}

	if o.Keepalive > 0 {
		// Each client keeps alive at the interval, phases spread evenly.
		step := o.Keepalive / time.Duration(len(g.clients))
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-o.Start:
			}
			w := g.newWorker()
			t := time.NewTicker(max(step, time.Microsecond))
			defer t.Stop()
			for i := 0; ; i = (i + 1) % len(g.clients) {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					w.sendKeepalive(g.clients[i], true)
				}
			}
		})
	}
	// Report when every client has its first notification.
	reported := false
	for ctx.Err() == nil {
		if !reported && g.notified.Load() == int64(o.Clients) {
			emit(genEvent{Event: "notified", Count: o.Clients, LastUnixNano: g.lastNote.Load()})
			reported = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

type generator struct {
	o                    LoadgenOptions
	dst                  syscall.SockaddrInet4
	clients              []*simClient
	closers              []int
	registered, notified atomic.Int64
	lastReg, lastNote    atomic.Int64
	sigs                 sigCache
	forged               atomic.Int64 // forwarded events that failed the signature check
}

func (g *generator) close() {
	for _, fd := range g.closers {
		syscall.Close(fd)
	}
}

// udpSocket opens a non-blocking UDP socket bound to ip and an ephemeral port.
func udpSocket(ip netip.Addr) (int, error) {
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: ip.As4()}); err != nil {
		syscall.Close(fd)
		return -1, err
	}
	return fd, nil
}

// serve answers the datagrams of one epoll set's clients until ctx ends.
func (g *generator) serve(ctx context.Context, ep int) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	events := make([]syscall.EpollEvent, 1024)
	buf := make([]byte, 2048)
	w := g.newWorker()
	for ctx.Err() == nil {
		n, err := syscall.EpollWait(ep, events, epollWait)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return
		}
		for _, ev := range events[:n] {
			c := g.clients[ev.Fd]
			// Level-triggered: what is left is reported again.
			// read, not recvfrom: the source is not needed, and recvfrom's
			// Go wrapper allocates one for every datagram.
			m, err := syscall.Read(c.fd, buf)
			if err != nil || m <= 0 {
				continue
			}
			w.receive(c, buf[:m])
		}
		if len(w.recheck) > 0 && time.Now().After(w.recheck[0].at) {
			now := time.Now()
			i := 0
			for ; i < len(w.recheck) && now.After(w.recheck[i].at); i++ {
				w.sendKeepalive(w.recheck[i].c, true)
			}
			w.recheck = append(w.recheck[:0], w.recheck[i:]...)
		}
		if n > 0 && n < len(events) {
			ts := syscall.NsecToTimespec(int64(coalesceWait))
			syscall.Nanosleep(&ts, nil) // on this locked thread: no scheduler round trip
		}
	}
}

// recheck is a keepalive a simulated daemon owes after a Challenge.
type recheck struct {
	c  *simClient
	at time.Time
}

// worker is what one goroutine needs to send: buffers, and its own copy of
// the destination (a syscall.Sockaddr keeps scratch space inside it).
type worker struct {
	g       *generator
	recheck []recheck // keepalives due after answering a Challenge
	sealer  wire.Sealer
	opener  wire.Opener
	pkt     []byte
	fwd     []byte // a forwarded event being sealed
	signed  []byte // the signed bytes of an event being checked
	dst     syscall.SockaddrInet4
}

func (g *generator) newWorker() *worker {
	return &worker{g: g, pkt: make([]byte, 0, wire.MaxDatagram), fwd: make([]byte, 0, wire.MaxDatagram),
		signed: make([]byte, 0, wire.MaxDatagram), dst: g.dst}
}

// sendKeepalive sends what the daemon would: quiet (no pong wanted) when
// its position is known and its last pong is under PongRefresh old.
func (w *worker) sendKeepalive(c *simClient, known bool) {
	w.keepalive(c, known, known && time.Since(time.Unix(0, c.lastPong.Load())) < wire.PongRefresh)
}

func (w *worker) keepalive(c *simClient, known, quiet bool) {
	m := &wire.Keepalive{Counter: c.counter.Add(1), Subs: []wire.Sub{{RepoID: w.g.o.Repo, Known: known, LastSeq: c.lastSeq.Load()}}, Quiet: quiet}
	if b, err := w.sealer.Seal(w.pkt[:0], m, c.pub, &c.shared); err == nil {
		syscall.Sendto(c.fd, b, 0, &w.dst)
	}
}

func maxStore(a *atomic.Int64, v int64) {
	for {
		old := a.Load()
		if v <= old || a.CompareAndSwap(old, v) {
			return
		}
	}
}

// receive handles one datagram as a daemon would: pongs register, each
// notification is acknowledged, a ping is answered with a keepalive.
func (w *worker) receive(c *simClient, b []byte) {
	g := w.g
	if g.o.Echo {
		w.echo(c, b)
		return
	}
	shared := &c.shared
	if sender, _, _, err := wire.ParseHeader(b); err != nil {
		return
	} else if sender != g.o.ServerKey {
		var ok bool
		if shared, ok = c.fromParent(sender); !ok {
			return // only the parent may send to a client
		}
		// From the parent, only a signed event counts.
		if _, m, err := w.opener.Open(b, shared); err == nil {
			if f, ok := m.(*wire.Forward); ok && w.onForward(c, f) {
				w.noteNotified(c)
			}
		}
		return
	}
	_, m, err := w.opener.Open(b, shared)
	if err != nil {
		return
	}
	switch m := m.(type) {
	case *wire.Pong:
		c.lastPong.Store(time.Now().UnixNano())
		if len(m.Statuses) == 1 && !c.ponged.Load() {
			c.lastSeq.Store(m.Statuses[0].Position)
			c.ponged.Store(true)
			w.noteRegistered(c)
		}
	case *wire.Notify:
		if m.Seq > c.lastSeq.Load() {
			c.lastSeq.Store(m.Seq)
		}
		w.ack(c, m.RepoID)
		w.noteNotified(c)
	case *wire.Forward:
		if c.peer != nil && w.onForward(c, m) {
			w.noteNotified(c)
		}
	case *wire.Challenge:
		// As the daemon: answer, and keepalive again a second later, which
		// brings a new Challenge if the answer was lost.
		w.sendToServer(c, &wire.ChallengeReply{Cookie: m.Cookie})
		w.recheck = append(w.recheck, recheck{c: c, at: time.Now().Add(time.Second)})
	case *wire.Fanout:
		w.onFanout(c, m)
	case *wire.Edge:
		w.onEdge(c, m)
	case *wire.Ping:
		w.sendKeepalive(c, true)
	}
}

// noteRegistered counts c as registered once it is: answered, and when
// simulating peers, in a tree, which every member of a tree of more than
// K(K+1) has an edge in. A client whose PeerInfo was lost is not: its
// next keepalive asks for a pong, which carries the offer again.
func (w *worker) noteRegistered(c *simClient) {
	if !c.ponged.Load() || (c.peer != nil && !c.linked.Load()) || !c.counted.CompareAndSwap(false, true) {
		return
	}
	w.g.registered.Add(1)
	maxStore(&w.g.lastReg, time.Now().UnixNano())
}

// ack tells the rendezvous what c has handled.
func (w *worker) ack(c *simClient, repo string) {
	w.sendToServer(c, &wire.Ack{RepoID: repo, Seq: c.lastSeq.Load()})
}

// noteNotified counts c's first notification.
func (w *worker) noteNotified(c *simClient) {
	if c.notified.CompareAndSwap(0, time.Now().UnixNano()) {
		w.g.notified.Add(1)
		maxStore(&w.g.lastNote, c.notified.Load())
	}
}

// readEvents parses a generator's stdout into a channel.
func readEvents(r io.Reader) <-chan genEvent {
	ch := make(chan genEvent, 16)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var e genEvent
			if json.Unmarshal(sc.Bytes(), &e) == nil {
				ch <- e
			}
		}
	}()
	return ch
}
