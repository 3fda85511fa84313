package rendezvous

import (
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

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
	msgs   []ipv4.Message
	addrs  []net.UDPAddr
	bufs   [][1][]byte // each message's one-element Buffers
}

// sealAndSend seals every job and sends them in batches, one sendmmsg per
// run of jobs on the same socket.
func (sw *sender) sealAndSend(s *Server, jobs []job) {
	if sw.buf == nil {
		sw.buf = make([]byte, 0, batchSize*wire.MaxDatagram)
		sw.msgs = make([]ipv4.Message, batchSize)
		sw.addrs = make([]net.UDPAddr, batchSize)
		sw.bufs = make([][1][]byte, batchSize)
	}
	n := 0
	var conn net.PacketConn
	v6 := false
	flush := func() {
		if n > 0 {
			sendBatch(conn, sw.msgs[:n])
		}
		n, sw.buf = 0, sw.buf[:0]
	}
	for i := range jobs {
		j := &jobs[i]
		if n == batchSize || (n > 0 && j.conn != conn) {
			flush()
		}
		if j.conn != conn {
			conn, v6 = j.conn, isV6Socket(j.conn)
		}
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
		ua := &sw.addrs[n]
		to := j.to
		if a := to.Addr(); a.Is4() && !v6 {
			b := a.As4()
			ua.IP = append(ua.IP[:0], b[:]...)
		} else {
			b := a.As16()
			ua.IP = append(ua.IP[:0], b[:]...)
		}
		ua.Port, ua.Zone = int(to.Port()), ""
		sw.bufs[n][0] = sw.buf[start:len(sw.buf):len(sw.buf)]
		sw.msgs[n] = ipv4.Message{Buffers: sw.bufs[n][:], Addr: ua}
		n++
	}
	flush()
}

func isV6Socket(conn net.PacketConn) bool {
	local, _ := conn.LocalAddr().(*net.UDPAddr)
	return local == nil || local.IP.To4() == nil
}

// sendBatch sends with sendmmsg where the socket allows it, else one by one.
func sendBatch(conn net.PacketConn, msgs []ipv4.Message) {
	uc, ok := conn.(*net.UDPConn)
	if !ok {
		for _, m := range msgs {
			conn.WriteTo(m.Buffers[0], m.Addr)
		}
		return
	}
	pc := batchConn(uc)
	for sent := 0; sent < len(msgs); {
		k, err := pc.WriteBatch(msgs[sent:], 0)
		sent += k
		if err != nil {
			// Fall back to plain writes for what is left.
			for _, m := range msgs[sent:] {
				uc.WriteTo(m.Buffers[0], m.Addr)
			}
			return
		}
	}
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
