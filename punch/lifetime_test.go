package punch

import (
	"testing"
	"time"
)

// The search converges just under a 15 s lifetime, and to the cap when the
// mapping never expires.
func TestLifetimeSearch(t *testing.T) {
	for _, tc := range []struct {
		lifetime time.Duration // 0: never expires
		lo, hi   time.Duration // where the chosen interval must land
	}{
		{15 * time.Second, 11 * time.Second, 15 * time.Second},
		{40 * time.Second, 30 * time.Second, 40 * time.Second},
		{3 * time.Second, MinKeepalive, 3 * time.Second},
		{0, 100 * time.Second, MaxKeepalive},
	} {
		s := newLifetimeSearch(0)
		for i := 0; i < 20; i++ {
			x := s.nextProbe()
			if x == 0 {
				break
			}
			s.record(x, tc.lifetime == 0 || x < tc.lifetime)
		}
		if !s.done {
			t.Errorf("lifetime %v: search did not end (lo %v hi %v)", tc.lifetime, s.lo, s.hi)
		}
		if iv := s.interval(); iv < tc.lo || iv > tc.hi {
			t.Errorf("lifetime %v: interval %v, want within [%v, %v]", tc.lifetime, iv, tc.lo, tc.hi)
		}
	}
	if s := newLifetimeSearch(7 * time.Second); s.nextProbe() != 0 || s.interval() != 7*time.Second {
		t.Error("a fixed interval must not search")
	}
}
