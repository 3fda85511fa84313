package rendezvous

import (
	"bufio"
	"errors"
	"net"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/rendezvous/store"
	"github.com/gitchat/gcn-punch/wire"
)

// streamEnd is the daemon's end of a stream in these tests.
type streamEnd struct {
	t   *testing.T
	c   net.Conn
	r   *bufio.Reader
	buf []byte
	cl  *testClient
}

// openStream serves a stream on one end of a pipe; the test closes the
// other (e.c) before its bubble ends.
func openStream(t *testing.T, s *Server) (*streamEnd, chan error) {
	t.Helper()
	srv, cli := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeStream(t.Context(), srv) }()
	e := &streamEnd{t: t, c: cli, r: bufio.NewReader(cli), buf: make([]byte, wire.MaxDatagram), cl: newTestClient(s)}
	return e, done
}

func (e *streamEnd) line() string {
	l, _ := e.r.ReadString('\n')
	return l
}

func (e *streamEnd) send(b []byte) {
	f, err := wire.AppendFrame(nil, b)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.c.Write(f); err != nil {
		e.t.Fatal(err)
	}
}

func (e *streamEnd) seal(m wire.Message) []byte {
	b, err := wire.Seal(nil, m, e.cl.pub, &e.cl.shared)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *streamEnd) recv() wire.Message {
	e.t.Helper()
	b, err := wire.ReadFrame(e.r, e.buf)
	if err != nil {
		e.t.Fatalf("reading a frame: %v", err)
	}
	return e.cl.open(e.t, b)
}

// Over a stream, a daemon does what it does over UDP: its keepalive is
// answered, the stream is validated like an address (Challenge, answer,
// Validated), a push arrives as a Notify and its ack is taken. Status
// shows the client on the "ssh" path. When its keepalive comes over UDP
// again, it is back on "udp", and the next push goes there.
func TestStreamCarriesTheSameDatagrams(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := testServer(t, true)
		e, done := openStream(t, s)
		defer func() { e.c.Close(); <-done }()
		if l := e.line(); l != "ok\n" {
			t.Fatalf("stream answered %q", l)
		}
		e.send(e.cl.keepalive(t, wire.Sub{RepoID: "chat.git"}))
		// The Challenge leaves while the keepalive is handled, the Pong as
		// its reply: in that order.
		ch, ok := e.recv().(*wire.Challenge)
		if !ok {
			t.Fatal("no Challenge over the stream")
		}
		if _, ok := e.recv().(*wire.Pong); !ok {
			t.Fatal("no Pong over the stream")
		}
		e.send(e.seal(&wire.ChallengeReply{Cookie: ch.Cookie}))
		synctest.Wait()
		s.sendDue() // the Run loop's work: notes go out
		if _, ok := e.recv().(*wire.Validated); !ok {
			t.Fatal("no Validated over the stream")
		}
		if _, err := s.cfg.Store.Append("chat.git", []store.Update{{Old: strings.Repeat("0", 40), New: strings.Repeat("a", 40), Ref: "refs/heads/main"}}, time.Now()); err != nil {
			t.Fatal(err)
		}
		s.Poke("chat.git")
		s.loadPoked()
		s.sendDue()
		n, ok := e.recv().(*wire.Notify)
		if !ok || n.Seq != 1 {
			t.Fatalf("no Notify 1 over the stream: %+v", n)
		}
		e.send(e.seal(&wire.Ack{RepoID: "chat.git", Seq: 1}))
		synctest.Wait()
		cs := s.Clients()
		if len(cs) != 1 || cs[0].Path != "ssh" || cs[0].Acked["chat.git"] != 1 {
			t.Fatalf("status %+v, want one client on ssh that acked 1", cs)
		}
		if _, err := s.cfg.Store.ReadClient(e.cl.pub); !errors.Is(err, store.ErrNoClient) {
			t.Fatalf("a record was written for a stream's address: %v", err)
		}
		// Back over UDP: the client moves, and is validated there.
		e.cl.prove(t, s, srcA)
		if r := s.handle(0, 0, 0, e.cl.keepalive(t, wire.Sub{RepoID: "chat.git", Known: true, LastSeq: 1}), srcA); r == nil {
			t.Fatal("no Pong over UDP")
		}
		e.cl.prove(t, s, srcA)
		if cs := s.Clients(); cs[0].Path != "udp" || cs[0].Addr != srcA.String() {
			t.Fatalf("after a keepalive over UDP the client is on %s at %s", cs[0].Path, cs[0].Addr)
		}
	})
}

// The cap on streams: one over it is refused with one line that says why.
func TestStreamsOverTheCapAreRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s, _ := testServer(t, true)
		s.cfg.MaxStreams = 1
		first, firstDone := openStream(t, s)
		defer func() { first.c.Close(); <-firstDone }()
		if l := first.line(); l != "ok\n" {
			t.Fatalf("first stream: %q", l)
		}
		second, done := openStream(t, s)
		defer second.c.Close()
		l := second.line()
		if !strings.HasPrefix(l, "error too many streams: this server accepts at most 1") {
			t.Fatalf("second stream: %q", l)
		}
		if err := <-done; !errors.Is(err, ErrTooManyStreams) {
			t.Fatalf("ServeStream: %v", err)
		}
	})
}

// Bad frames end the stream, and nothing of them is taken: a frame longer
// than a datagram, an empty one, one cut short, garbage in a good frame,
// and a forged datagram (which over UDP would only be counted: a stream is
// a session someone opened with their SSH key).
func TestStreamBadFramesEndIt(t *testing.T) {
	key := newTestClient(&Server{}).pub
	forged, _ := wire.Seal(nil, &wire.Keepalive{Counter: 1}, key, &[32]byte{9})
	framedForged, _ := wire.AppendFrame(nil, forged)
	for name, bad := range map[string][]byte{
		"oversized": {0x04, 0xb1},
		"empty":     {0, 0},
		"cut short": {0, 200, 'g', 'c', 'n'},
		"garbage":   {0, 4, 'x', 'y', 'z', 'w'},
		"forged":    framedForged,
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				s, _ := testServer(t, true)
				e, done := openStream(t, s)
				defer e.c.Close()
				e.line()
				e.c.Write(bad)
				if name == "cut short" {
					e.c.Close()
				}
				if err := <-done; err == nil {
					t.Fatal("the stream went on after a bad frame")
				}
				st := s.Stats()
				if st.Keepalives != 0 || len(s.Clients()) != 0 || (name == "forged") != (st.Forged == 1) {
					t.Fatalf("something was taken, or miscounted: %+v", st)
				}
			})
		})
	}
}

// A tree member that moves to a stream leaves every tree (a client over
// SSH is a leaf served by the rendezvous), and its offers on the stream
// put it back in none.
func TestStreamClientIsALeaf(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newFanLab(t, 2, 3)
		if tr := l.s.Trees(); len(tr) != 1 || tr[0].Size != 3 {
			t.Fatalf("trees %+v", tr)
		}
		moving := l.clients[0]
		e, done := openStream(t, l.s)
		defer func() { e.c.Close(); <-done }()
		e.cl = moving.testClient
		e.line()
		e.send(moving.keepalive(t, wire.Sub{RepoID: "chat.git", Known: true}))
		ch, ok := e.recv().(*wire.Challenge)
		if !ok {
			t.Fatal("no Challenge on the stream")
		}
		e.recv() // the Pong
		e.send(e.seal(&wire.ChallengeReply{Cookie: ch.Cookie}))
		e.send(e.seal(&wire.PeerInfo{Flags: wire.PeerFlagParent}))
		synctest.Wait()
		if tr := l.s.Trees(); len(tr) != 1 || tr[0].Size != 2 {
			t.Fatalf("after the move to a stream the tree is %+v, want the 2 others", tr)
		}
	})
}
