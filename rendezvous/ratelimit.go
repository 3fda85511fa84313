package rendezvous

import (
	"net/netip"
	"time"
)

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

// take spends a token of a bucket that refills at rate up to burst (it
// starts full), and reports whether there was one.
func (b *bucket) take(rate, burst float64, now time.Time) bool {
	if b.last.IsZero() {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+now.Sub(b.last).Seconds()*rate)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
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
		b = &bucket{}
		r.buckets[ip] = b
	}
	return b.take(r.rate, r.burst, now)
}
