package rendezvous

import (
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/gitchat/gcn-punch/wire"
)

// job is one datagram to seal and send; it is gathered under the server's
// lock and sealed and sent outside it, so a large fan-out never stalls the
// reader (whose acks would otherwise overflow the socket buffer).
type job struct {
	conn   net.PacketConn
	to     netip.AddrPort
	shared *[32]byte
	msg    wire.Message
}

// parallelSeal is the job count above which sealing is spread over the CPUs.
const parallelSeal = 2048

// batchSize is how many datagrams one sendmmsg carries.
const batchSize = 256

// sealAndSend seals every job and sends them, batched per socket.
func (s *Server) sealAndSend(jobs []job) {
	if len(jobs) == 0 {
		return
	}
	workers := 1
	if len(jobs) >= parallelSeal {
		workers = runtime.GOMAXPROCS(0)
	}
	chunk := (len(jobs) + workers - 1) / workers
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, len(jobs))
		if lo >= hi {
			break
		}
		wg.Go(func() { s.sealAndSendChunk(jobs[lo:hi]) })
	}
	wg.Wait()
}

func (s *Server) sealAndSendChunk(jobs []job) {
	var sealer wire.Sealer
	buf := make([]byte, 0, len(jobs)*160)
	pkts := make([][]byte, 0, len(jobs))
	for _, j := range jobs {
		start := len(buf)
		out, err := sealer.Seal(buf, j.msg, s.pub, j.shared)
		if err != nil {
			s.log.Error("cannot seal", "err", err)
			pkts = append(pkts, nil)
			continue
		}
		// When append grows buf, earlier packets keep the old array alive.
		buf = out
		pkts = append(pkts, buf[start:len(buf):len(buf)])
	}
	// Send in runs of the same socket.
	for i := 0; i < len(jobs); {
		k := i
		for k < len(jobs) && jobs[k].conn == jobs[i].conn {
			k++
		}
		sendBatch(jobs[i].conn, jobs[i:k], pkts[i:k])
		i = k
	}
}

// sendBatch sends with sendmmsg where the socket allows it, else one by one.
func sendBatch(conn net.PacketConn, jobs []job, pkts [][]byte) {
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		for i, j := range jobs {
			if pkts[i] != nil {
				conn.WriteTo(pkts[i], net.UDPAddrFromAddrPort(j.to))
			}
		}
		return
	}
	local, _ := uc.LocalAddr().(*net.UDPAddr)
	v4 := local != nil && local.IP.To4() != nil
	msgs := make([]ipv4.Message, 0, min(len(jobs), batchSize))
	flush := func() {
		if len(msgs) == 0 {
			return
		}
		var err error
		for sent := 0; sent < len(msgs) && err == nil; {
			var n int
			if v4 {
				n, err = ipv4.NewPacketConn(uc).WriteBatch(msgs[sent:], 0)
			} else {
				n, err = ipv6.NewPacketConn(uc).WriteBatch(msgs[sent:], 0)
			}
			sent += n
			if err != nil {
				// Fall back to plain writes for what is left.
				for _, m := range msgs[sent:] {
					uc.WriteTo(m.Buffers[0], m.Addr)
				}
			}
		}
		msgs = msgs[:0]
	}
	for i, j := range jobs {
		if pkts[i] == nil {
			continue
		}
		to := j.to
		if !v4 && to.Addr().Is4() {
			to = netip.AddrPortFrom(netip.AddrFrom16(to.Addr().As16()), to.Port())
		}
		msgs = append(msgs, ipv4.Message{Buffers: [][]byte{pkts[i]}, Addr: net.UDPAddrFromAddrPort(to)})
		if len(msgs) == batchSize {
			flush()
		}
	}
	flush()
}

// Reading in batches. Under load each datagram costing its own recvfrom,
// wakeup and sendto dominates the rendezvous's CPU, so it reads with
// recvmmsg, answers with sendmmsg, and, when packets arrive faster than
// coalesceAbove a second, waits coalesceWait before the next read so that
// each call carries several. At low rates nothing waits.
const (
	readBatch = 64
	// coalesceAbove is the packet rate above which reads are coalesced.
	coalesceAbove = 2000
	// coalesceWait delays a pong or an ack's processing by at most this;
	// both tolerate it (retransmission timeouts start at 250 ms).
	coalesceWait = 2 * time.Millisecond
)

type batchReader interface {
	ReadBatch([]ipv4.Message, int) (int, error)
	WriteBatch([]ipv4.Message, int) (int, error)
}

func batchConn(uc *net.UDPConn) batchReader {
	if local, _ := uc.LocalAddr().(*net.UDPAddr); local != nil && local.IP.To4() != nil {
		return ipv4.NewPacketConn(uc)
	}
	return ipv6.NewPacketConn(uc)
}

func (s *Server) readLoopBatched(ip, port int, uc *net.UDPConn) error {
	pc := batchConn(uc)
	msgs := make([]ipv4.Message, readBatch)
	for i := range msgs {
		msgs[i].Buffers = [][]byte{make([]byte, 2048)}
	}
	replies := make([]ipv4.Message, 0, readBatch)
	var windowStart time.Time
	var windowCount int
	for {
		n, err := pc.ReadBatch(msgs, 0)
		if err != nil {
			if stop, err := s.readFailed(err); stop {
				return err
			}
			continue
		}
		replies = replies[:0]
		for _, m := range msgs[:n] {
			src, ok := addrPort(m.Addr)
			if !ok {
				continue
			}
			if reply := s.handle(ip, port, m.Buffers[0][:m.N], src); reply != nil {
				replies = append(replies, ipv4.Message{Buffers: [][]byte{reply}, Addr: m.Addr})
			}
		}
		for sent := 0; sent < len(replies); {
			k, err := pc.WriteBatch(replies[sent:], 0)
			if err != nil {
				break
			}
			sent += k
		}
		now := time.Now()
		if now.Sub(windowStart) > time.Second {
			windowStart, windowCount = now, 0
		}
		windowCount += n
		if n < readBatch && windowCount > coalesceAbove {
			time.Sleep(coalesceWait)
		}
	}
}
