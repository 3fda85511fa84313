package rendezvous

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// The blocking socket reads batches with their sources and answers them,
// on IPv4 and on a dual-stack IPv6 socket (v4 sources unmapped, v4
// destinations mapped back); a past read deadline ends a blocked read.
func TestUDPSocketBatchesBothFamilies(t *testing.T) {
	for _, tc := range []struct{ listen, client, dst string }{
		{"127.0.0.1:0", "127.0.0.1:0", "127.0.0.1"},
		{"[::]:0", "127.0.0.1:0", "127.0.0.1"},
		{"[::1]:0", "[::1]:0", "::1"},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			pc, err := net.ListenPacket("udp", tc.listen)
			if err != nil {
				t.Skipf("no %s here: %v", tc.listen, err)
			}
			u, err := takeUDP(pc)
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()
			port := u.LocalAddr().(*net.UDPAddr).Port
			cl, err := net.ListenPacket("udp", tc.client)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			to := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(tc.dst), uint16(port)))
			for _, m := range []string{"one", "two", "three"} {
				if _, err := cl.WriteTo([]byte(m), to); err != nil {
					t.Fatal(err)
				}
			}
			var rb recvBatch
			rb.init(8, 64)
			var got []string
			var src netip.AddrPort
			for len(got) < 3 {
				n, err := u.readBatch(&rb)
				if err != nil {
					t.Fatal(err)
				}
				for i := range n {
					got = append(got, string(rb.bufs[i][:rb.lens[i]]))
					src = rb.srcs[i]
				}
			}
			want := cl.LocalAddr().(*net.UDPAddr).AddrPort()
			if got[0] != "one" || got[2] != "three" || src.Port() != want.Port() || src.Addr() != want.Addr().Unmap() {
				t.Fatalf("got %q from %v, want one..three from %v", got, src, want)
			}
			var sb sendBatch
			sb.init(2)
			sb.add([]byte("reply"), src, u.v6)
			if err := u.writeBatch(&sb); err != nil {
				t.Fatal(err)
			}
			cl.SetReadDeadline(time.Now().Add(5 * time.Second))
			buf := make([]byte, 64)
			n, _, err := cl.ReadFrom(buf)
			if err != nil || string(buf[:n]) != "reply" {
				t.Fatalf("reply: %q %v", buf[:n], err)
			}
			done := make(chan error, 1)
			go func() { _, err := u.readBatch(&rb); done <- err }()
			// Give the read time to block, so that usually the shutdown is what
			// ends it; a deadline set before the read starts must end it too.
			time.Sleep(20 * time.Millisecond)
			u.SetReadDeadline(time.Unix(1, 0))
			select {
			case err := <-done:
				if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
					t.Fatalf("read after deadline: %v, want a timeout", err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("a past read deadline did not end a blocked read")
			}
		})
	}
}
