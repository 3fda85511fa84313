package rendezvous

import (
	"net"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// job is one datagram to seal and send; it is planned under the server's
// lock and sealed and sent outside it, so a large fan-out never stalls the
// reader (whose acks would otherwise overflow the socket buffer). A
// notification is described by its event rather than a built message, so
// planning one allocates nothing.
type job struct {
	conn net.PacketConn
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
	pkts   []outPkt
	batch  sendBatch
}

type outPkt struct {
	b  []byte
	to netip.AddrPort
}

// sealAndSend seals every job and sends them in batches, one sendmmsg per
// run of jobs on the same socket.
func (sw *sender) sealAndSend(s *Server, jobs []job) {
	if sw.buf == nil {
		sw.buf = make([]byte, 0, batchSize*wire.MaxDatagram)
		sw.pkts = make([]outPkt, 0, batchSize)
		sw.batch.init(batchSize)
	}
	var conn net.PacketConn
	flush := func() {
		if len(sw.pkts) > 0 {
			sw.send(conn)
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
		sw.pkts = append(sw.pkts, outPkt{sw.buf[start:len(sw.buf):len(sw.buf)], j.to})
	}
	flush()
}

// send sends the batch with sendmmsg where the socket allows it, else one
// datagram at a time.
func (sw *sender) send(conn net.PacketConn) {
	u, ok := conn.(*udpSocket)
	if !ok {
		for _, p := range sw.pkts {
			conn.WriteTo(p.b, net.UDPAddrFromAddrPort(p.to))
		}
		return
	}
	for _, p := range sw.pkts {
		sw.batch.add(p.b, p.to, u.v6)
	}
	u.writeBatch(&sw.batch)
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

func (s *Server) readLoopBatched(ip, port int, u *udpSocket) error {
	var rb recvBatch
	rb.init(readBatch, 2048)
	var replies sendBatch
	replies.init(readBatch)
	// The packet rate: datagrams in the current second, and in the one before
	// (so that coalescing does not stop at each second's start).
	var windowStart time.Time
	var windowCount, lastWindow int
	for {
		n, err := u.readBatch(&rb)
		if err != nil {
			if stop, err := s.readFailed(err); stop {
				return err
			}
			continue
		}
		for i := range n {
			if reply := s.handle(ip, port, rb.bufs[i][:rb.lens[i]], rb.srcs[i]); reply != nil {
				replies.add(reply, rb.srcs[i], u.v6)
			}
		}
		u.writeBatch(&replies)
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
