package rendezvous

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Streams over SSH. Where UDP is blocked, a daemon reaches the rendezvous
// through the SSH session git already uses: `gcn-heartbeat watch` on the
// server connects the session to the control socket ("stream"), and the
// rendezvous treats the stream as one more socket, with an address of its
// own. The same sealed datagrams travel on it, framed (wire.ReadFrame), so
// keepalives, address validation, notifications, acks and exactly-once
// delivery are the code UDP uses; a keepalive that arrives over UDP again
// moves the client back (a rebinding, as when a NAT changes its port).
// A client on a stream is a leaf of the fan-out trees.

// DefaultMaxStreams caps the streams a rendezvous accepts at once. Each
// holds an SSH session on the server, measured at about 11 MiB (PSS: sshd's
// two processes 5.7 MiB, the gcn-heartbeat watch process the rest), so 64
// cost about 700 MiB: what a small git server can spare for clients whose
// networks block UDP. docs/operations.md has the figure.
const DefaultMaxStreams = 64

// streamPrefix holds the addresses the rendezvous gives streams: 100::/64
// is discard-only (RFC 6666), so none is ever a real peer.
var streamPrefix = netip.MustParsePrefix("100::/64")

// streamAddr is the address of the stream numbered id.
func streamAddr(id uint64) netip.AddrPort {
	var a [16]byte
	a[0] = 0x01
	for i := range 8 {
		a[15-i] = byte(id >> (8 * i))
	}
	return netip.AddrPortFrom(netip.AddrFrom16(a), 1)
}

// isStream says whether a client address is a stream's.
func isStream(a netip.AddrPort) bool { return streamPrefix.Contains(a.Addr()) }

// pathName names the kind of path a client address is: "udp" or "ssh".
func pathName(a netip.AddrPort) string {
	if isStream(a) {
		return "ssh"
	}
	return "udp"
}

// streamConn is a stream seen as a socket: datagrams written to its
// address are framed and queued, and a writer of its own sends them, so
// that no writer (the send loop holds the server's lock) ever waits for a
// slow SSH session. Like a UDP socket's buffer, the queue drops what does
// not fit; retransmission recovers it. It reads nothing itself
// (ServeStream does).
type streamConn struct {
	c    net.Conn
	addr netip.AddrPort
	out  chan []byte
	done chan struct{} // closed when the stream ends
}

// streamQueue is how many frames wait for a slow session: a window of
// notifications (32) for a few repositories, with their pongs and pings.
const streamQueue = 256

func newStreamConn(c net.Conn, addr netip.AddrPort) *streamConn {
	return &streamConn{c: c, addr: addr, out: make(chan []byte, streamQueue), done: make(chan struct{})}
}

// ReadBatch is not used: ServeStream reads the frames.
func (sc *streamConn) ReadBatch([]udpconn.Packet) (int, error) { return 0, net.ErrClosed }

// WriteBatch queues every datagram for this stream's address, framed.
func (sc *streamConn) WriteBatch(pkts []udpconn.Packet) error {
	for _, p := range pkts {
		if p.Addr != sc.addr {
			continue // for an address this stream is not
		}
		f, err := wire.AppendFrame(nil, p.Buf)
		if err != nil {
			return err
		}
		select {
		case sc.out <- f:
		case <-sc.done:
			return net.ErrClosed
		default:
			// Full: dropped, as a socket buffer would.
		}
	}
	return nil
}

// writeLoop sends the queued frames until the stream ends; a session that
// takes more than streamWriteTimeout for one ends it.
func (sc *streamConn) writeLoop() {
	for {
		select {
		case f := <-sc.out:
			sc.c.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
			if _, err := sc.c.Write(f); err != nil {
				sc.c.Close()
				return
			}
		case <-sc.done:
			return
		}
	}
}

// streamWriteTimeout bounds one frame's write to a session that stopped
// reading.
const streamWriteTimeout = 5 * time.Second

func (sc *streamConn) LocalAddrPort() netip.AddrPort { return sc.addr }
func (sc *streamConn) Close() error                  { return sc.c.Close() }

// ErrTooManyStreams refuses a stream over the cap.
var ErrTooManyStreams = errors.New("too many streams")

// ServeStream runs one stream on c, a control-socket connection whose
// request line ("stream") has been read: it answers "ok", then reads
// frames until the stream ends. A bad frame ends the stream with one log
// line; nothing of it is taken.
func (s *Server) ServeStream(ctx context.Context, c net.Conn) error {
	c.SetDeadline(time.Time{})
	s.mu.Lock()
	max := s.cfg.MaxStreams
	if max == 0 {
		max = DefaultMaxStreams
	}
	if s.closed || len(s.streams) >= max {
		s.mu.Unlock()
		fmt.Fprintf(c, "error %v: this server accepts at most %d; it serves over UDP, or try again later\n", ErrTooManyStreams, max)
		return ErrTooManyStreams
	}
	s.nextStream++
	sc := newStreamConn(c, streamAddr(s.nextStream))
	s.streams[sc] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, sc)
		s.mu.Unlock()
		close(sc.done)
		c.Close()
	}()
	if _, err := io.WriteString(c, "ok\n"); err != nil {
		return err
	}
	go sc.writeLoop()
	s.log.Info("stream up", "stream", sc.addr.Addr())
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReader(c)
	buf := make([]byte, wire.MaxDatagram)
	for {
		b, err := wire.ReadFrame(r, buf)
		if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
			s.log.Info("stream down", "stream", sc.addr.Addr())
			return nil
		}
		if err != nil {
			s.log.Warn("stream closed: bad frame", "stream", sc.addr.Addr(), "err", err)
			return err
		}
		s.datagramsIn.Add(1)
		if wire.LooksLikeSTUN(b) {
			s.mu.Lock()
			s.stats.Malformed++
			s.mu.Unlock()
			s.log.Warn("stream closed: STUN has no meaning on a stream", "stream", sc.addr.Addr())
			return errors.New("STUN on a stream")
		}
		reply, err := s.handleGCN(sc, b, sc.addr, time.Now())
		if err != nil {
			// Over UDP anyone can send anything; a stream is a session
			// someone opened with their SSH key: it ends on the first
			// datagram that is not a sealed gcn-punch one.
			s.log.Warn("stream closed: a datagram that does not open", "stream", sc.addr.Addr(), "err", err)
			return err
		}
		if reply != nil {
			s.datagramsOut.Add(1)
			udpconn.WriteTo(sc, reply, sc.addr)
		}
	}
}

// closeStreams ends every stream, at shutdown. Called with mu held.
func (s *Server) closeStreams() {
	for sc := range s.streams {
		sc.c.Close()
	}
}
