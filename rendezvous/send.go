package rendezvous

import (
	"net/netip"

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
	// Either a notification of ev from r, or msg. With sig, the
	// notification is the signed event (a Forward) for a tree member.
	r   *repo
	ev  *store.Event
	sig *[wire.SigLen]byte
	msg wire.Message
	// For a notification to a daemon that asked for them (its Subscribe):
	// type 0x14, with the chat message and the client's previous event.
	// With sig: sig is the signature of the Forward with the message.
	withMsg bool
	after   uint64
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
	fwd    wire.Forward
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
			s.datagramsOut.Add(uint64(len(sw.pkts)))
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
		switch {
		case j.sig != nil:
			sw.fwd = wire.Forward{Seq: j.ev.Seq, TimeMilli: j.ev.TimeMilli, RepoID: j.r.id, Ref: j.ev.Ref, Old: j.ev.Old, New: j.ev.New, Sig: *j.sig}
			if j.withMsg {
				sw.fwd.WithMessage, sw.fwd.Chat = true, *j.ev.Chat // as signed: fitted by sign
			}
			m = &sw.fwd
		case j.ev != nil:
			sw.notify = wire.Notify{Seq: j.ev.Seq, TimeMilli: j.ev.TimeMilli, Recipient: j.c.key, RepoID: j.r.id, Ref: j.ev.Ref, Old: j.ev.Old, New: j.ev.New,
				WithMessage: j.withMsg, After: j.after}
			if j.withMsg && j.ev.Chat != nil {
				sw.notify.Chat = *j.ev.Chat
				sw.notify.FitMessage()
			}
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
