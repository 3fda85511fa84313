package punch

import (
	"context"
	"fmt"
	"time"

	"github.com/pion/stun/v2"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// lifetimeResult is what measureLifetime found: the NAT kept an idle
// mapping for secs; or, with atLeast, nothing expired within LifetimeMax
// (a bound of the measurement, not the NAT's); or, with under, even the
// shortest idle time tried was too long.
type lifetimeResult struct {
	secs           float64
	atLeast, under bool
}

// measureLifetime finds how long the NAT keeps an idle mapping (RFC 5780
// §4.6): after waiting T, a fresh socket asks the rendezvous to answer to the
// first socket's public port (RESPONSE-PORT); the answer gets through only
// if the mapping is still there. T doubles from 10 s, then one bisection;
// a NAT that forgets within 10 s is tried once at 5 s. A rendezvous that
// does not answer RESPONSE-PORT even with no wait (one that has no second
// address answers plain Binding only) gives no result: ok is false.
func measureLifetime(ctx context.Context, o ProbeOptions, s1 *stunSocket) (res lifetimeResult, ok bool) {
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
		if t > 0 {
			progress("  mapping lifetime: idle %v ...", t)
		}
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
				if t > 0 {
					progress("  ... kept")
				}
				return true, true
			case <-time.After(lifetimeGrace / 3):
			}
		}
		if t > 0 {
			progress("  ... gone")
		}
		return false, true
	}
	// With no wait the answer must arrive: otherwise the rendezvous does not
	// serve RESPONSE-PORT, and every "gone" below would be its silence.
	if kept, valid := survives(0); !valid || !kept {
		return res, false
	}
	var lo, hi time.Duration
	var waited time.Duration
	for t := LifetimeStart; waited+t <= max; t *= 2 {
		kept, valid := survives(t)
		if !valid {
			return res, false
		}
		waited += t
		if !kept {
			hi = t
			break
		}
		lo = t
	}
	switch {
	case hi == 0:
		return lifetimeResult{secs: lo.Seconds(), atLeast: true}, lo > 0 // kept for as long as we waited
	case lo == 0:
		// Gone within the first step: try half of it once.
		half := hi / 2
		if kept, valid := survives(half); valid && kept {
			return lifetimeResult{secs: half.Seconds()}, true
		} else if !valid {
			return res, false
		}
		return lifetimeResult{secs: half.Seconds(), under: true}, true
	}
	if mid := (lo + hi) / 2; waited+mid <= max {
		if kept, valid := survives(mid); valid && kept {
			lo = mid
		}
	}
	return lifetimeResult{secs: lo.Seconds()}, true
}
