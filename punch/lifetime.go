package punch

import "time"

// NAT mapping lifetime discovery. The daemon asks the rendezvous to ping it
// after X of silence and stays silent: a ping that arrives proves the NAT
// kept the mapping for X idle; one that does not, that it did not. A binary
// search over X finds the longest safe keepalive interval, so the daemon
// sends as few keepalives as the NAT allows and never fewer than it needs.
const (
	// MaxKeepalive caps the search: RFC 4787 REQ-5 asks NATs to keep an idle
	// UDP mapping at least 2 minutes, and past that the savings are small
	// while recovery from a router reboot waits one interval.
	MaxKeepalive = 120 * time.Second
	// MinKeepalive is the floor, for NATs that forget within seconds.
	MinKeepalive = 2 * time.Second
	// probeGrace is how long after X a probe ping may still arrive: the
	// server ticks every 10 ms and a round trip rarely takes a second.
	probeGrace = 2 * time.Second
	// safetyMargin shortens the chosen interval below the longest idle time
	// seen to survive, for timer jitter and the path's delay.
	safetyMargin = 0.9
	// resolution stops the search once failure and success are this close
	// (relative): the next probe would gain less than it costs.
	resolution = 0.15
)

// lifetimeSearch holds what the daemon knows of its NAT's mapping lifetime.
type lifetimeSearch struct {
	fixed     time.Duration // set by the user: no search
	lo, hi    time.Duration // longest idle seen to survive; shortest seen to fail (0: none yet)
	done      bool
	startWith time.Duration
}

func newLifetimeSearch(fixed time.Duration) *lifetimeSearch {
	return &lifetimeSearch{fixed: fixed, startWith: DefaultKeepalive, done: fixed > 0}
}

// interval is the keepalive interval to use now.
func (s *lifetimeSearch) interval() time.Duration {
	switch {
	case s.fixed > 0:
		return s.fixed
	case s.lo > 0:
		return max(MinKeepalive, time.Duration(float64(s.lo)*safetyMargin))
	case s.hi > 0:
		return max(MinKeepalive, s.hi/2)
	}
	return DefaultKeepalive
}

// nextProbe is the idle time to test next, or 0 when the search is over.
func (s *lifetimeSearch) nextProbe() time.Duration {
	if s.done {
		return 0
	}
	switch {
	case s.lo == 0 && s.hi == 0:
		return s.startWith
	case s.hi == 0:
		return min(2*s.lo, MaxKeepalive)
	case s.lo == 0:
		return max(MinKeepalive, s.hi/2)
	}
	return (s.lo + s.hi) / 2
}

// record takes a probe's outcome and reports whether the search just ended.
func (s *lifetimeSearch) record(x time.Duration, survived bool) bool {
	if s.done {
		return false
	}
	if survived {
		s.lo = max(s.lo, x)
	} else if s.hi == 0 || x < s.hi {
		s.hi = x
	}
	switch {
	case s.lo >= MaxKeepalive:
		s.done = true
	case s.hi > 0 && s.hi <= MinKeepalive:
		s.done = true
	case s.lo > 0 && s.hi > 0 && float64(s.hi-s.lo) <= resolution*float64(s.lo):
		s.done = true
	}
	return s.done
}
