package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// The floor: what the same number of datagrams costs with no protocol and
// no crypto. One socket, set up as the rendezvous's (the same batched
// system calls, the same buffers), sends one datagram the size of a sealed
// notification to each simulated client; each client, on the same sockets
// and epoll loops as in the fan-out, answers with one the size of a sealed
// ack. The time until every answer is back, on the same machine in the same
// run, is what no fan-out can beat: each fan-out is reported as a ratio to it.

const (
	echoHello   = 'h' // client → floor: here I am
	echoWelcome = 'w' // floor → client: seen
)

// Sizes of the datagrams the floor exchanges: those of the bench's push.
var (
	notifySize = sealedLen(&wire.Notify{Seq: 1, RepoID: "chat.git", Ref: "refs/heads/main", Old: strings.Repeat("1", 40), New: strings.Repeat("2", 40)})
	ackSize    = sealedLen(&wire.Ack{RepoID: "chat.git", Seq: 1})
)

func sealedLen(m wire.Message) int {
	b, err := wire.Seal(nil, m, wire.Key{}, &[32]byte{})
	if err != nil {
		panic(err)
	}
	return len(b)
}

// echo is a floor client's whole protocol.
func (w *worker) echo(c *simClient, b []byte) {
	if len(b) == 1 && b[0] == echoWelcome {
		c.ponged.Store(true)
		w.noteRegistered(c)
		return
	}
	syscall.Sendto(c.fd, w.pkt[:ackSize], 0, &w.dst)
	w.noteNotified(c)
}

// floorSocket is the floor's sender: it welcomes the clients, and counts
// their echoes.
type floorSocket struct {
	conn    udpconn.Conn
	clients []netip.AddrPort
	seen    map[netip.AddrPort]bool
}

func listenFloor() (*floorSocket, error) {
	conn, err := udpconn.Listen("127.0.0.1:0", udpconn.LargeBuffers(8<<20))
	if err != nil {
		return nil, err
	}
	return &floorSocket{conn: conn, seen: map[netip.AddrPort]bool{}}, nil
}

// welcome reads hellos until n distinct clients said hello, answering each.
func (f *floorSocket) welcome(n int, limit time.Duration) error {
	pkts := make([]udpconn.Packet, 64)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 64)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
		case <-time.After(limit):
			f.conn.Close() // ends the read below
		}
	}()
	var replies []udpconn.Packet
	for len(f.clients) < n {
		k, err := f.conn.ReadBatch(pkts)
		if err != nil {
			return fmt.Errorf("floor: %d of %d clients said hello: %w", len(f.clients), n, err)
		}
		replies = replies[:0]
		for _, p := range pkts[:k] {
			if len(p.Buf) != 1 || p.Buf[0] != echoHello {
				continue
			}
			if !f.seen[p.Addr] {
				f.seen[p.Addr] = true
				f.clients = append(f.clients, p.Addr)
			}
			replies = append(replies, udpconn.Packet{Buf: []byte{echoWelcome}, Addr: p.Addr})
		}
		f.conn.WriteBatch(replies)
	}
	return nil
}

// push sends one datagram to every client and returns when every client's
// echo is back, with the time from the first send to the last echo. It
// sends as the rendezvous does (batches of 256 on one sender per CPU) and
// reads as it does under load (batches of 64, waiting floorCoalesce after
// a short one), so that the floor is one the rendezvous could reach.
func (f *floorSocket) push(limit time.Duration) (time.Duration, error) {
	echoed := make(chan error, 1)
	start := time.Now()
	go func() {
		pkts := make([]udpconn.Packet, 64)
		for i := range pkts {
			pkts[i].Buf = make([]byte, 2048)
		}
		got := 0
		for got < len(f.clients) {
			k, err := f.conn.ReadBatch(pkts)
			if err != nil {
				echoed <- fmt.Errorf("floor: %d of %d echoes: %w", got, len(f.clients), err)
				return
			}
			for _, p := range pkts[:k] {
				if len(p.Buf) == ackSize {
					got++
				}
			}
			if k < len(pkts) && got < len(f.clients) {
				time.Sleep(floorCoalesce)
			}
		}
		echoed <- nil
	}()
	payload := make([]byte, notifySize)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			batch := make([]udpconn.Packet, 0, 256)
			for {
				hi := int(next.Add(256))
				lo := hi - 256
				if lo >= len(f.clients) {
					return
				}
				batch = batch[:0]
				for _, a := range f.clients[lo:min(hi, len(f.clients))] {
					batch = append(batch, udpconn.Packet{Buf: payload, Addr: a})
				}
				f.conn.WriteBatch(batch)
			}
		})
	}
	wg.Wait()
	select {
	case err := <-echoed:
		return time.Since(start), err
	case <-time.After(limit):
		f.conn.Close()
		<-echoed
		return 0, errors.New("floor: the echoes did not all come back")
	}
}

// floorCoalesce is the rendezvous's wait after a short read under load.
const floorCoalesce = 10 * time.Millisecond

// floorRun is what the floor of one push took.
type floorRun struct {
	Ms, CPUMs, SimCPUMs float64 // until all echoed; the sender's CPU; the simulated clients' CPU
}

// floorOnce measures the floor for n clients.
func floorOnce(ctx context.Context, o Options, n int) (floorRun, error) {
	f, err := listenFloor()
	if err != nil {
		return floorRun{}, err
	}
	defer f.conn.Close()
	gens, evs, _, err := startGenerators(ctx, o, genTarget{addr: f.conn.LocalAddrPort(), echo: true}, n, 0)
	defer stopAll(gens)
	if err != nil {
		return floorRun{}, err
	}
	if err := f.welcome(n, 5*time.Minute); err != nil {
		return floorRun{}, err
	}
	if _, err := await(evs, "registered", time.Minute); err != nil {
		return floorRun{}, err
	}
	time.Sleep(300 * time.Millisecond) // the last welcomes are taken
	cpu0, sim0 := selfCPU(), gensCPU(gens)
	d, err := f.push(2 * time.Minute)
	if err != nil {
		return floorRun{}, err
	}
	cpu1, sim1 := selfCPU(), gensCPU(gens)
	return floorRun{Ms: float64(d.Microseconds()) / 1000, CPUMs: float64((cpu1 - cpu0).Microseconds()) / 1000,
		SimCPUMs: float64((sim1 - sim0).Microseconds()) / 1000}, nil
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
