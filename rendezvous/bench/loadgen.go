// Package bench measures the rendezvous and the whole loop: fan-out, latency, memory and keepalive cost.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
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

type simClient struct {
	conn     net.PacketConn
	pub      wire.Key
	shared   [32]byte
	counter  atomic.Uint64
	lastSeq  atomic.Uint64
	ponged   atomic.Bool
	notified atomic.Int64 // unix nanos of the first notification
}

// Loadgen runs until ctx ends or stdin closes, reporting on out.
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
	clients := make([]*simClient, o.Clients)
	dst := net.UDPAddrFromAddrPort(o.Server)
	ip := o.FirstIP
	for i := range clients {
		if i > 0 && i%o.PerIP == 0 {
			ip = ip.Next()
		}
		conn, err := net.ListenPacket("udp", netip.AddrPortFrom(ip, 0).String())
		if err != nil {
			return fmt.Errorf("client %d on %s: %w", i, ip, err)
		}
		defer conn.Close()
		pub, priv, err := wire.GenerateKey()
		if err != nil {
			return err
		}
		clients[i] = &simClient{conn: conn, pub: pub, shared: wire.SharedKey(o.ServerKey, priv)}
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var registered, notified atomic.Int64
	var lastReg, lastNote atomic.Int64
	for _, c := range clients {
		wg.Go(func() { c.receive(ctx, o, dst, &registered, &notified, &lastReg, &lastNote) })
	}
	go func() {
		<-ctx.Done()
		for _, c := range clients {
			c.conn.SetReadDeadline(time.Unix(1, 0))
		}
	}()

	// Register: a fresh keepalive from each, repeated until it is answered.
	// Pace the first round so the rendezvous's socket buffer is not flooded.
	for round := 0; registered.Load() < int64(o.Clients); round++ {
		if round > 20 || ctx.Err() != nil {
			return fmt.Errorf("only %d of %d clients registered", registered.Load(), o.Clients)
		}
		for i, c := range clients {
			if !c.ponged.Load() {
				c.sendKeepalive(o, dst, false)
			}
			if i%500 == 499 {
				time.Sleep(5 * time.Millisecond)
			}
		}
		deadline := time.Now().Add(2 * time.Second)
		for registered.Load() < int64(o.Clients) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	emit(genEvent{Event: "registered", Count: o.Clients, LastUnixNano: lastReg.Load()})

	if o.Keepalive > 0 {
		// Each client keeps alive at the interval, phases spread evenly.
		step := o.Keepalive / time.Duration(len(clients))
		wg.Go(func() {
			select {
			case <-ctx.Done():
				return
			case <-o.Start:
			}
			t := time.NewTicker(max(step, time.Microsecond))
			defer t.Stop()
			for i := 0; ; i = (i + 1) % len(clients) {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					clients[i].sendKeepalive(o, dst, true)
				}
			}
		})
	}
	// Report when every client has its first notification.
	reported := false
	for ctx.Err() == nil {
		if !reported && notified.Load() == int64(o.Clients) {
			emit(genEvent{Event: "notified", Count: o.Clients, LastUnixNano: lastNote.Load()})
			reported = true
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

func (c *simClient) sendKeepalive(o LoadgenOptions, dst net.Addr, known bool) {
	m := &wire.Keepalive{Counter: c.counter.Add(1), Subs: []wire.Sub{{RepoID: o.Repo, Known: known, LastSeq: c.lastSeq.Load()}}}
	b, err := wire.Seal(nil, m, c.pub, &c.shared)
	if err == nil {
		c.conn.WriteTo(b, dst)
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

func (c *simClient) receive(ctx context.Context, o LoadgenOptions, dst net.Addr, registered, notified, lastReg, lastNote *atomic.Int64) {
	buf := make([]byte, 2048)
	for {
		n, _, err := c.conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		_, m, err := wire.Open(buf[:n], &c.shared)
		if err != nil {
			continue
		}
		switch m := m.(type) {
		case *wire.Pong:
			if len(m.Statuses) == 1 && !c.ponged.Load() {
				c.lastSeq.Store(m.Statuses[0].Position)
				c.ponged.Store(true)
				registered.Add(1)
				maxStore(lastReg, time.Now().UnixNano())
			}
		case *wire.Notify:
			if m.Seq > c.lastSeq.Load() {
				c.lastSeq.Store(m.Seq)
			}
			b, err := wire.Seal(nil, &wire.Ack{RepoID: m.RepoID, Seq: c.lastSeq.Load()}, c.pub, &c.shared)
			if err == nil {
				c.conn.WriteTo(b, dst)
			}
			if c.notified.CompareAndSwap(0, time.Now().UnixNano()) {
				notified.Add(1)
				maxStore(lastNote, c.notified.Load())
			}
		case *wire.Ping:
			c.sendKeepalive(o, dst, true)
		}
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
