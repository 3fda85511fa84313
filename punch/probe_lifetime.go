package punch

import (
	"context"
	"fmt"
	"time"

	"github.com/pion/stun/v2"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// measureLifetime finds how long the NAT keeps an idle mapping (RFC 5780
// §4.6): after waiting T, a fresh socket asks the rendezvous to answer to the
// first socket's public port (RESPONSE-PORT); the answer gets through only
// if the mapping is still there. T doubles from 10 s, then one bisection.
// atLeast says that nothing expired within LifetimeMax: the lifetime is at
// least the result, which is then a bound of the measurement, not the NAT's.
func measureLifetime(ctx context.Context, o ProbeOptions, s1 *stunSocket) (secs float64, atLeast, ok bool) {
	max := o.LifetimeMax
	if max <= 0 {
		max = lifetimeMaxDefault
	}
	progress := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	survives := func(t time.Duration) (bool, bool) {
		m1 := mapped(s1.transact(ctx, o.Server)) // (re)open the mapping
		if !m1.IsValid() {
			return false, false
		}
		progress("  mapping lifetime: idle %v ...", t)
		select {
		case <-ctx.Done():
			return false, false
		case <-time.After(t):
		}
		s5, err := newSTUNSocket(o.Server)
		if err != nil {
			return false, false
		}
		defer s5.conn.Close()
		req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, responsePort(m1.Port()))
		// The answer goes to s1, so watch for its transaction there.
		ch, done := s1.expect(req.TransactionID)
		defer done()
		for i := 0; i < 3; i++ {
			udpconn.WriteTo(s5.conn, req.Raw, o.Server)
			select {
			case <-ch:
				progress("  ... kept")
				return true, true
			case <-time.After(lifetimeGrace / 3):
			}
		}
		progress("  ... gone")
		return false, true
	}
	var lo, hi time.Duration
	var waited time.Duration
	for t := LifetimeStart; waited+t <= max; t *= 2 {
		ok, valid := survives(t)
		if !valid {
			return 0, false, false
		}
		waited += t
		if !ok {
			hi = t
			break
		}
		lo = t
	}
	if hi == 0 {
		return lo.Seconds(), true, lo > 0 // kept for as long as we waited: at least lo
	}
	if mid := (lo + hi) / 2; lo > 0 && waited+mid <= max {
		if ok, valid := survives(mid); valid && ok {
			lo = mid
		}
	}
	return lo.Seconds(), false, true
}
