package punch_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/punch"
	"github.com/gitchat/gcn-punch/wire"
)

// pipeStream is a Streamer to the lab's rendezvous over an in-memory pipe:
// what `ssh … gcn-heartbeat watch` gives a daemon, without the SSH.
func (l *lab) pipeStream(opened *atomic.Int32) punch.Streamer {
	return func(ctx context.Context) (io.ReadWriteCloser, error) {
		srv, cli := net.Pipe()
		go l.srv.ServeStream(ctx, srv)
		line, err := bufio.NewReader(io.LimitReader(cli, 3)).ReadString('\n')
		if err != nil || line != "ok\n" {
			cli.Close()
			return nil, errors.New("stream refused: " + line)
		}
		opened.Add(1)
		return cli, nil
	}
}

// streamingDaemon runs a daemon at addr, following the lab's rendezvous,
// that opens streams with open; stop ends it.
func (l *lab) streamingDaemon(t *testing.T, addr netip.AddrPort, rec *recorder, open punch.Streamer) (d *punch.Daemon, stop func()) {
	t.Helper()
	conn, err := l.net.Listen(addr.String())
	if err != nil {
		t.Fatal(err)
	}
	d, err = punch.New(punch.Config{Conn: conn, StateDir: filepath.Join(t.TempDir(), "state"), Handle: rec.handle,
		Servers: []punch.Server{{Addr: mustAddr(l.addr), Key: l.srv.PublicKey(), Repos: []string{"chat.git"}}}})
	if err != nil {
		t.Fatal(err)
	}
	d.SetStreamer(l.srv.PublicKey(), open)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	return d, func() { cancel(); conn.Close(); <-done }
}

// A router that drops all UDP (issue 12): the daemon turns to the stream
// over SSH within udpDeadAfter (8 s) of its start, every push arrives
// exactly once, in order, over it; when UDP passes again the daemon moves
// back within a UDP retry (30 s), closes the stream, and the pushes go on
// over UDP, nothing lost or doubled across either move.
func TestDaemonMovesToSSHWhenUDPIsBlockedAndBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		daemonAddr := mustAddr("198.19.1.2:40000")
		var blocked atomic.Bool
		blocked.Store(true)
		l.net.Drop = func(from, to netip.AddrPort, _ []byte) bool {
			return blocked.Load() && (from == daemonAddr || to == daemonAddr)
		}
		var rec recorder
		var opened atomic.Int32
		d, stop := l.streamingDaemon(t, daemonAddr, &rec, l.pipeStream(&opened))
		defer stop()

		start := time.Now()
		if !waitFor(30*time.Second, func() bool { _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); return known }) {
			t.Fatal("the daemon never got its position over the stream")
		}
		took := time.Since(start)
		if opened.Load() != 1 || took > 10*time.Second {
			t.Fatalf("on the stream after %v (%d streams opened), want one within 10 s", took, opened.Load())
		}
		if p := pathOf(l, d); p != "ssh" {
			t.Fatalf("the rendezvous has the client on %q, want ssh", p)
		}
		// The stream's pongs name its placeholder address (100::/64): not
		// where the daemon is seen, which it must not take or show.
		if obs := d.Observed(l.srv.PublicKey()); netip.MustParsePrefix("100::/64").Contains(obs.Addr()) {
			t.Fatalf("the daemon takes the stream's placeholder %v as its public address", obs)
		}
		l.push(t, 5)
		waitFor(10*time.Second, func() bool { return len(rec.snapshot()) >= 5 })

		// UDP passes again: back within a retry, the stream closed.
		blocked.Store(false)
		back := time.Now()
		if !waitFor(time.Minute, func() bool { return pathOf(l, d) == "udp" }) {
			t.Fatal("the daemon did not move back to UDP")
		}
		t.Logf("moved to SSH %v after start; back on UDP %v after UDP returned (fake time)", took, time.Since(back).Round(time.Second))
		l.push(t, 5)
		waitFor(10*time.Second, func() bool { return len(rec.snapshot()) >= 10 })
		synctest.Wait()
		wantExactlyInOrder(t, "the daemon", rec.snapshot(), 10)
		if st := d.Status(); st.Servers[0].Path != "udp" {
			t.Fatalf("the daemon says it is on %q", st.Servers[0].Path)
		}
	})
}

// A firewall that drops only the daemon's outgoing UDP (its mapping made,
// what comes in still passing): the rendezvous's notifications arrive, the
// acks do not, and the rendezvous sends them again. Those are not answers:
// the repeated ones make the daemon ask for a pong, none comes, and it
// turns to SSH within a minute (before, it waited for the rendezvous to
// time it out, 5 minutes, and then for its next pong refresh). Every
// event is handled once, in order; with UDP whole again it moves back.
func TestDaemonTurnsToSSHWhenOnlyItsOutgoingUDPIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		daemonAddr := mustAddr("198.19.1.2:40000")
		var outBlocked, opened atomic.Int32
		l.net.Drop = func(from, _ netip.AddrPort, _ []byte) bool {
			return outBlocked.Load() == 1 && from == daemonAddr
		}
		var rec recorder
		d, stop := l.streamingDaemon(t, daemonAddr, &rec, l.pipeStream(&opened))
		defer stop()
		l.waitKnown(t, d)
		l.pushArrivesAtOnce(t, &rec, "on UDP")

		outBlocked.Store(1)
		cut := time.Now()
		l.push(t, 3)
		if !waitFor(2*time.Minute, func() bool { return opened.Load() == 1 && pathOf(l, d) == "ssh" }) {
			t.Fatalf("after 2 minutes with its outgoing UDP dropped: %d streams opened, the rendezvous has the client on %q", opened.Load(), pathOf(l, d))
		}
		took := time.Since(cut)
		if took > time.Minute {
			t.Errorf("turned to SSH %v after its outgoing UDP was dropped, want within a minute", took)
		}
		waitFor(10*time.Second, func() bool { return len(rec.snapshot()) >= 4 })
		l.push(t, 2)
		waitFor(10*time.Second, func() bool { return len(rec.snapshot()) >= 6 })

		outBlocked.Store(0)
		back := time.Now()
		if !waitFor(time.Minute, func() bool { return pathOf(l, d) == "udp" }) {
			t.Fatal("the daemon did not move back to UDP")
		}
		t.Logf("on SSH %v after the cut; back on UDP %v after it ended (fake time)", took.Round(time.Second), time.Since(back).Round(time.Second))
		l.push(t, 2)
		waitFor(10*time.Second, func() bool { return len(rec.snapshot()) >= 8 })
		synctest.Wait()
		wantExactlyInOrder(t, "the daemon", rec.snapshot(), 8)
	})
}

// A daemon that can open a stream does not while UDP works: the
// rendezvous's silence during lifetime probes and between quiet
// keepalives is not a dead path, only an answer owed and not come is.
// Half an hour of fake time, the search for the keepalive interval
// included, opens no stream; a push still arrives at once.
func TestQuietRendezvousIsNotDeadUDP(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLab(t, 0, true)
		var rec recorder
		var opened atomic.Int32
		d, stop := l.streamingDaemon(t, mustAddr("198.19.1.2:40000"), &rec, l.pipeStream(&opened))
		defer stop()
		time.Sleep(30 * time.Minute)
		if n := opened.Load(); n != 0 || pathOf(l, d) != "udp" {
			t.Fatalf("%d streams opened over a working UDP path (the rendezvous has the client on %q)", n, pathOf(l, d))
		}
		l.pushArrivesAtOnce(t, &rec, "after 30 min on UDP")
		synctest.Wait()
	})
}

// pathOf is the path the rendezvous has the lab's one client on.
func pathOf(l *lab, d *punch.Daemon) string {
	for _, c := range l.srv.Clients() {
		if c.ID == d.PublicKey().String() {
			return c.Path
		}
	}
	return ""
}

// Bad frames from the server's side of a stream (oversized, empty, cut
// short, garbage inside a good frame): the daemon takes nothing, ends the
// stream with one log line, and opens another only after the retry time
// (10 s: a server that drops streams at once is not hammered).
func TestDaemonEndsAStreamOnBadFrames(t *testing.T) {
	stranger, _, _ := wire.GenerateKey()
	forged, _ := wire.Seal(nil, &wire.Pong{Counter: 1}, stranger, &[32]byte{7})
	framedForged, _ := wire.AppendFrame(nil, forged)
	for name, bad := range map[string][]byte{
		"forged":    framedForged,
		"oversized": {0x04, 0xb1},
		"empty":     {0, 0},
		"cut short": {0, 200, 'g', 'c', 'n'},
		"garbage":   {0, 4, 'x', 'y', 'z', 'w'},
	} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				l := newLab(t, 0, true)
				daemonAddr := mustAddr("198.19.1.2:40000")
				l.net.Drop = func(from, to netip.AddrPort, _ []byte) bool { return from == daemonAddr || to == daemonAddr }
				var opened atomic.Int32
				var rec recorder
				d, stop := l.streamingDaemon(t, daemonAddr, &rec, func(ctx context.Context) (io.ReadWriteCloser, error) {
					srv, cli := net.Pipe()
					opened.Add(1)
					go func() {
						srv.Write(bad)
						if name == "cut short" {
							srv.Close()
							return
						}
						io.Copy(io.Discard, srv) // the daemon's keepalives
					}()
					return cli, nil
				})
				defer stop()
				time.Sleep(12 * time.Second) // one stream opened at 8 s, and ended
				st := d.Stats()
				if opened.Load() != 1 {
					t.Fatalf("%d streams opened within 12 s, want 1 (the next waits 10 s)", opened.Load())
				}
				if _, known := d.LastSeq(l.srv.PublicKey(), "chat.git"); known || len(rec.snapshot()) != 0 {
					t.Fatal("something was taken from a bad stream")
				}
				if name == "garbage" && st.Malformed != 1 {
					t.Fatalf("the garbage datagram was not counted: %+v", st)
				}
				if d.Status().Servers[0].Path != "udp" {
					t.Fatal("the daemon still counts the ended stream as its path")
				}
			})
		})
	}
}
