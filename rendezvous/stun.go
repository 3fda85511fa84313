package rendezvous

import (
	"net"
	"net/netip"
	"time"

	"github.com/pion/stun/v2"
)

// stunResponse builds the Binding success response to a request from src,
// or returns nil for anything that is not a well-formed Binding request.
// It carries only XOR-MAPPED-ADDRESS, plus FINGERPRINT when the request had
// one: nothing that was not asked for, so the response stays small.
func stunResponse(req []byte, src netip.AddrPort) []byte {
	m := &stun.Message{Raw: append([]byte(nil), req...)}
	if err := m.Decode(); err != nil || m.Type != stun.BindingRequest {
		return nil
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return nil
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(src.Addr().Unmap().AsSlice()), Port: int(src.Port())},
	}
	if m.Contains(stun.AttrFingerprint) {
		setters = append(setters, stun.Fingerprint)
	}
	resp, err := stun.Build(setters...)
	if err != nil {
		return nil
	}
	return resp.Raw
}

// rateLimiter is a token bucket per source IP. STUN responses are larger than
// the requests (RFC 5389 makes them so), so each source gets a small budget
// and the rendezvous is a poor amplifier.
type rateLimiter struct {
	rate    float64 // tokens per second
	burst   float64
	buckets map[netip.Addr]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// maxBuckets bounds the limiter's memory under a flood of spoofed sources;
// past it, new sources are refused until the next sweep.
const maxBuckets = 65536

func newRateLimiter(rate, burst float64) *rateLimiter {
	return &rateLimiter{rate: rate, burst: burst, buckets: make(map[netip.Addr]*bucket)}
}

func (r *rateLimiter) allow(ip netip.Addr, now time.Time) bool {
	// Buckets that have refilled completely carry no information: drop them
	// once a second so the map stays small.
	if now.Sub(r.swept) > time.Second {
		r.swept = now
		for k, b := range r.buckets {
			if b.tokens+now.Sub(b.last).Seconds()*r.rate >= r.burst {
				delete(r.buckets, k)
			}
		}
	}
	b := r.buckets[ip]
	if b == nil {
		if len(r.buckets) >= maxBuckets {
			return false
		}
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[ip] = b
	}
	b.tokens = min(r.burst, b.tokens+now.Sub(b.last).Seconds()*r.rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}
