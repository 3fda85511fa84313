package rendezvous

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Cookies under load. A key the rendezvous has not seen costs it a
// Curve25519 precomputation before its datagram can be opened. Past the
// budget for new keys (newKeyRate), a new key gets a Busy reply instead:
// 20 bytes, in clear, with a cookie bound to the key and the source
// address. A client that receives it puts the cookie in front of its next
// keepalive and comes in through a second budget (cookiedKeyRate) that
// only cookies open. A flood from forged source addresses never sees its
// cookies, so it can fill the first budget but never the second, and a
// new client under such a flood waits one round trip, not until the flood
// ends (WireGuard's cookie reply under load, with the same aim).

// admitNewKey takes a new key's share of a budget: the cookie lane first
// for a valid cookie, then the open one. Called with mu held.
func (s *Server) admitNewKey(cookied bool, now time.Time) bool {
	rate, cookiedRate := float64(newKeyRate), float64(cookiedKeyRate)
	if r := s.cfg.NewKeyRate; r > 0 {
		rate, cookiedRate = r, r
	}
	if cookied && s.cookiedKeys.take(cookiedRate, cookiedRate, now) {
		s.stats.Cookied++
		return true
	}
	return s.newKeys.take(rate, rate, now)
}

// busy answers a new key refused for want of budget: with a cookie when it
// came without one (a Busy is far smaller than any request), else nothing.
// Called with mu held.
func (s *Server) busy(sender wire.Key, src netip.AddrPort, cookied bool, now time.Time) []byte {
	if cookied || !s.busyOut.take(busyRate, busyBurst, now) {
		s.stats.Limited++
		return nil
	}
	s.stats.Busy++
	return wire.AppendBusy(nil, s.cookieOf(cookieBusy, sender, src, cookieEpochOf(now)))
}
