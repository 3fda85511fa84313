package punch_test

import (
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gitchat/gcn-punch/netsim"
	"github.com/gitchat/gcn-punch/punch"
)

const (
	dualServer4, dualServer6 = "198.18.0.1:3478", "[2001:2::1]:3478"
	dualClient4, dualClient6 = "198.19.1.2:40000", "[2001:2:1::2]:40000"
)

// dualLab is a rendezvous on one dual-stack socket and a dual-stack daemon
// that knows both of its addresses, on an in-memory network.
func dualLab(t *testing.T, rec *recorder, setup func(*netsim.MemConn)) (*lab, *punch.Daemon) {
	t.Helper()
	mn := netsim.NewMemNet(7)
	sc, err := mn.ListenDual(dualServer4, dualServer6)
	if err != nil {
		t.Fatal(err)
	}
	l := labOn(t, mn, sc, true, nil)
	conn, err := mn.ListenDual(dualClient4, dualClient6)
	if err != nil {
		t.Fatal(err)
	}
	if setup != nil {
		setup(conn)
	}
	d, _ := runDaemon(t, conn, punch.Config{StateDir: filepath.Join(t.TempDir(), "state"), Handle: rec.handle,
		Servers: []punch.Server{{Addr: mustAddr(dualServer4), Alt: mustAddr(dualServer6), Key: l.srv.PublicKey(), Repos: []string{"chat.git"}}}})
	return l, d
}

// paths is the daemon's view of its paths to its one rendezvous, by family.
func paths(d *punch.Daemon) map[string]punch.PathStatus {
	out := map[string]punch.PathStatus{}
	for _, s := range d.Status().Servers {
		for _, p := range s.Paths {
			out[p.Family] = p
		}
	}
	return out
}

// primaryIs waits (fake time) until the daemon's primary path is of
// family, both paths known to the rendezvous, and reports whether it came.
func primaryIs(l *lab, d *punch.Daemon, family string, addr string) bool {
	return waitFor(5*time.Minute, func() bool {
		p := paths(d)[family]
		cs := l.srv.Clients()
		return p.Role == "primary" && p.Validated && len(cs) == 1 && cs[0].Addr == addr && cs[0].Standby != ""
	})
}

// A dual-stack daemon keeps a path on each family and delivers over IPv6,
// the preferred one; IPv6 is then lost in the middle of a stream of
// pushes: every event still arrives exactly once, in order, none waiting
// for a keepalive interval, and both ends move to IPv4. When IPv6 comes
// back, the daemon returns to it. Fake time.
func TestDualStackFailsOverWithoutLossOrDuplicates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rec recorder
		l, d := dualLab(t, &rec, nil)
		if !primaryIs(l, d, "ipv6", dualClient6) {
			t.Fatalf("no IPv6 primary with an IPv4 standby: daemon %+v, rendezvous %+v", paths(d), l.srv.Clients())
		}
		time.Sleep(time.Minute) // past the first pongs: keepalives are quiet now
		l.push(t, 5)
		waitFor(time.Minute, func() bool { return len(rec.snapshot()) == 5 })
		wantExactlyInOrder(t, "over IPv6", rec.snapshot(), 5)

		// IPv6 stops, both ways, between two pushes.
		var cut sync.Mutex
		v6down := false
		l.net.Drop = func(from, to netip.AddrPort, _ []byte) bool {
			cut.Lock()
			defer cut.Unlock()
			return v6down && (from.Addr().Is6() || to.Addr().Is6())
		}
		start := time.Now()
		l.push(t, 5)
		cut.Lock()
		v6down = true
		cut.Unlock()
		l.push(t, 10)
		waitFor(time.Minute, func() bool { return len(rec.snapshot()) == 20 })
		took := time.Since(start)
		synctest.Wait()
		wantExactlyInOrder(t, "across the loss of IPv6", rec.snapshot(), 20)
		if took > 5*time.Second {
			t.Fatalf("the events pushed after IPv6 was lost took %v: they waited for something slower than a retransmission", took)
		}
		if !primaryIs(l, d, "ipv4", dualClient4) {
			t.Fatalf("still not on IPv4: daemon %+v, rendezvous %+v", paths(d), l.srv.Clients())
		}
		if st := l.srv.Stats(); st.PathSwaps == 0 {
			t.Fatalf("the rendezvous never moved the client: %+v", st)
		}

		// IPv6 comes back: the daemon returns to it after it has answered
		// for a while, and deliveries follow.
		cut.Lock()
		v6down = false
		cut.Unlock()
		if !primaryIs(l, d, "ipv6", dualClient6) {
			t.Fatalf("did not return to IPv6: daemon %+v, rendezvous %+v", paths(d), l.srv.Clients())
		}
		l.push(t, 3)
		waitFor(time.Minute, func() bool { return len(rec.snapshot()) == 23 })
		synctest.Wait()
		wantExactlyInOrder(t, "back on IPv6", rec.snapshot(), 23)
	})
}

// Keepalive learning runs per family: behind an IPv4 NAT that forgets idle
// mappings after 15 s and an IPv6 firewall that keeps them, one daemon
// keeps its IPv4 keepalive under 15 s and lets its IPv6 one climb. Fake
// time.
func TestDualStackLearnsEachFamilysIdleTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rec recorder
		l, d := dualLab(t, &rec, func(c *netsim.MemConn) {
			c.SetMappingLifetime(15 * time.Second)
			c.SetMappingLifetime6(0)
		})
		time.Sleep(40 * time.Minute)
		p := paths(d)
		iv4, err4 := time.ParseDuration(p["ipv4"].Keepalive)
		iv6, err6 := time.ParseDuration(p["ipv6"].Keepalive)
		t.Logf("keepalive chosen: IPv4 %v, IPv6 %v", iv4, iv6)
		if err4 != nil || err6 != nil || iv4 < 10*time.Second || iv4 > 15*time.Second || iv6 < 100*time.Second {
			t.Fatalf("keepalives IPv4 %q, IPv6 %q: want IPv4 within [10s, 15s] and IPv6 above 100s", p["ipv4"].Keepalive, p["ipv6"].Keepalive)
		}
		// After a long idle on both, a push still arrives at once.
		time.Sleep(45 * time.Second)
		l.pushArrivesAtOnce(t, &rec, "after 45 s idle")
		synctest.Wait()
	})
}
