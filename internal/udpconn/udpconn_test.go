package udpconn

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// Both real forms of Conn read batches with their sources and answer them,
// on IPv4 and on a dual-stack IPv6 socket (v4 sources unmapped, v4
// destinations mapped back); Close ends a blocked read with net.ErrClosed.
func TestConnBatchesBothFamilies(t *testing.T) {
	forms := map[string]func(*net.UDPConn) (Conn, error){
		"system":   wrap,
		"portable": func(uc *net.UDPConn) (Conn, error) { return NewPortable(uc), nil },
	}
	for form, mk := range forms {
		for _, tc := range []struct{ listen, client, dst string }{
			{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1"},
			{"[::]:0", "127.0.0.1:0", "127.0.0.1"},
			{"[::1]:0", "[::1]:0", "::1"},
		} {
			t.Run(form+" "+tc.listen, func(t *testing.T) {
				pc, err := net.ListenPacket("udp", tc.listen)
				if err != nil {
					t.Skipf("no %s here: %v", tc.listen, err)
				}
				u, err := mk(pc.(*net.UDPConn))
				if err != nil {
					t.Fatal(err)
				}
				defer u.Close()
				cl, err := net.ListenPacket("udp", tc.client)
				if err != nil {
					t.Fatal(err)
				}
				defer cl.Close()
				to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.dst), u.LocalAddrPort().Port()))
				for _, m := range []string{"one", "two", "three"} {
					if _, err := cl.WriteTo([]byte(m), to); err != nil {
						t.Fatal(err)
					}
				}
				pkts := make([]Packet, 8)
				for i := range pkts {
					pkts[i].Buf = make([]byte, 64)
				}
				var got []string
				var src netip.AddrPort
				for len(got) < 3 {
					n, err := u.ReadBatch(pkts)
					if err != nil {
						t.Fatal(err)
					}
					for i := range n {
						got = append(got, string(pkts[i].Buf))
						src = pkts[i].Addr
					}
				}
				want := cl.LocalAddr().(*net.UDPAddr).AddrPort()
				if got[0] != "one" || got[2] != "three" || src.Port() != want.Port() || src.Addr() != want.Addr().Unmap() {
					t.Fatalf("got %q from %v, want one..three from %v", got, src, want)
				}
				if err := u.WriteBatch([]Packet{{Buf: []byte("reply"), Addr: src}, {Buf: []byte("again"), Addr: src}}); err != nil {
					t.Fatal(err)
				}
				cl.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 64)
				for _, w := range []string{"reply", "again"} {
					n, _, err := cl.ReadFrom(buf)
					if err != nil || string(buf[:n]) != w {
						t.Fatalf("reply: %q %v, want %q", buf[:n], err, w)
					}
				}
				done := make(chan error, 1)
				go func() { _, err := u.ReadBatch(pkts); done <- err }()
				// Give the read time to block, so that usually the close is what
				// ends it; a close before the read starts must end it too.
				time.Sleep(20 * time.Millisecond)
				u.Close()
				select {
				case err := <-done:
					if !errors.Is(err, net.ErrClosed) {
						t.Fatalf("read after Close: %v, want net.ErrClosed", err)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("Close did not end a blocked read")
				}
			})
		}
	}
}

// A datagram larger than its buffer is skipped, and the slots' buffers stay
// distinct afterwards: skipping permutes the buffers inside a batch.
func TestSystemConnSkipsTruncatedAndKeepsBuffersApart(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u, err := wrap(pc.(*net.UDPConn))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	cl, _ := net.ListenPacket("udp", "127.0.0.1:0")
	defer cl.Close()
	to := net.UDPAddrFromAddrPort(u.LocalAddrPort())
	for _, m := range []string{"one", string(make([]byte, 100)), "three"} {
		cl.WriteTo([]byte(m), to)
	}
	time.Sleep(50 * time.Millisecond) // all three queued: one batch
	pkts := make([]Packet, 8)
	for i := range pkts {
		pkts[i].Buf = make([]byte, 64)
	}
	var got []string
	for len(got) < 2 {
		n, err := u.ReadBatch(pkts)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pkts[:n] {
			got = append(got, string(p.Buf))
		}
	}
	if len(got) != 2 || got[0] != "one" || got[1] != "three" {
		t.Fatalf("got %q, want one and three (the 100-byte datagram skipped)", got)
	}
	seen := map[*byte]bool{}
	for _, p := range pkts {
		b := p.Buf[:1]
		if seen[&b[0]] {
			t.Fatal("two slots share one buffer")
		}
		seen[&b[0]] = true
	}
}
