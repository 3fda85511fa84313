package rendezvous

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// job is one datagram to seal and send; it is planned under the server's
// lock and sealed and sent outside it, so a large fan-out never stalls the
// reader (whose acks would otherwise overflow the socket buffer). A
// notification is described by its event rather than a built message, so
// planning one allocates nothing.
type job struct {
	conn udpconn.Conn
	to   netip.AddrPort
	c    *client // the recipient: its key and shared key never change
	// Either a notification of ev from r, or msg.
	r   *repo
	ev  *store.Event
	msg wire.Message
}

// batchSize is how many datagrams one sendmmsg carries.
const batchSize = 256

// sender seals and sends jobs with buffers it keeps, so that after the
// first fan-out sending allocates nothing. Each is used by one goroutine at
// a time.
type sender struct {
	jobs   []job
	sealer wire.Sealer
	notify wire.Notify
	buf    []byte // sealed datagrams of one batch
	pkts   []udpconn.Packet
}

// sealAndSend seals every job and sends them in batches, one sendmmsg per
// run of jobs on the same socket.
func (sw *sender) sealAndSend(s *Server, jobs []job) {
	if sw.buf == nil {
		sw.buf = make([]byte, 0, batchSize*wire.MaxDatagram)
		sw.pkts = make([]udpconn.Packet, 0, batchSize)
	}
	var conn udpconn.Conn
	flush := func() {
		if len(sw.pkts) > 0 {
			conn.WriteBatch(sw.pkts)
		}
		sw.pkts, sw.buf = sw.pkts[:0], sw.buf[:0]
	}
	for i := range jobs {
		j := &jobs[i]
		if len(sw.pkts) == batchSize || (len(sw.pkts) > 0 && j.conn != conn) {
			flush()
		}
		conn = j.conn
		m := j.msg
		if j.ev != nil {
			sw.notify = wire.Notify{Seq: j.ev.Seq, TimeMilli: j.ev.TimeMilli, Recipient: j.c.key, RepoID: j.r.id, Ref: j.ev.Ref, Old: j.ev.Old, New: j.ev.New}
			m = &sw.notify
		}
		start := len(sw.buf)
		out, err := sw.sealer.Seal(sw.buf, m, s.pub, &j.c.shared)
		if err != nil {
			s.log.Error("cannot seal", "err", err)
			continue
		}
		sw.buf = out // never grows: the batch's room was reserved
		sw.pkts = append(sw.pkts, udpconn.Packet{Buf: sw.buf[start:len(sw.buf):len(sw.buf)], Addr: j.to})
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
	coalesceWait = 10 * time.Millisecond
)

// readLoop reads grid cell (ip, port)'s socket in batches and answers each
// batch with one batch of replies.
func (s *Server) readLoop(ip, port int) error {
	conn := s.grid[ip][port]
	pkts := make([]udpconn.Packet, readBatch)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 2048)
	}
	replies := make([]udpconn.Packet, 0, readBatch)
	// The packet rate: datagrams in the current second, and in the one before
	// (so that coalescing does not stop at each second's start).
	var windowStart time.Time
	var windowCount, lastWindow int
	for {
		n, err := conn.ReadBatch(pkts)
		if err != nil {
			return s.readFailed(err)
		}
		replies = replies[:0]
		for _, p := range pkts[:n] {
			if reply := s.handle(ip, port, p.Buf, p.Addr); reply != nil {
				replies = append(replies, udpconn.Packet{Buf: reply, Addr: p.Addr})
			}
		}
		if len(replies) > 0 {
			conn.WriteBatch(replies)
		}
		now := time.Now()
		if now.Sub(windowStart) > time.Second {
			lastWindow = windowCount
			if now.Sub(windowStart) > 2*time.Second {
				lastWindow = 0 // a quiet second went by
			}
			windowStart, windowCount = now, 0
		}
		windowCount += n
		if n < readBatch && max(windowCount, lastWindow) > coalesceAbove {
			time.Sleep(coalesceWait)
		}
	}
}
