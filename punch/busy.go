package punch

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Busy cookies. A rendezvous flooded with new keys answers a new one with a
// Busy carrying a cookie for this daemon's key and address, instead of
// opening its keepalive; a keepalive with the cookie in front gets in
// through a budget that forged floods cannot reach. The Busy is not
// authenticated (the rendezvous sends it before it knows the key), so the
// worst a forged one can do is make keepalives carry a useless cookie,
// which the rendezvous ignores.

// cookieKeep is how long keepalives carry a cookie: the rendezvous accepts
// one for the 2-minute epoch it was made in and the next, so at least two
// minutes; one minute leaves room for clock steps. Once the daemon is
// known, the cookie costs 20 bytes a keepalive and is soon dropped.
const cookieKeep = time.Minute

// busyResendGap bounds the keepalives that Busy replies make the daemon
// send at once: one a second, however many Busy replies arrive (forged
// ones too), so that Busy cannot make a daemon flood its rendezvous.
const busyResendGap = time.Second

// onBusy takes a Busy from a rendezvous this daemon follows, keeps its
// cookie, and resends the keepalive with it at once: a newcomer under a
// flood waits one round trip.
func (d *Daemon) onBusy(b []byte, src netip.AddrPort) {
	ck, err := wire.ParseBusy(b)
	p := d.linkAt(src)
	if err != nil || p == nil {
		d.count(func(s *Stats) { s.Malformed++ })
		return
	}
	d.count(func(s *Stats) { s.Busy++ })
	now := time.Now()
	p.mu.Lock()
	p.cookie, p.cookieAt = ck, now
	resend := now.Sub(p.busyResent) >= busyResendGap
	if resend {
		p.busyResent = now
	}
	p.mu.Unlock()
	if resend {
		d.log.Info("rendezvous busy with new clients: answering its cookie", "server", src)
		u := p.pathAt(src)
		if u == nil {
			u = p.first()
		}
		d.sendKeepalive(p, u, 0)
	}
}

// linkAt is the link to the rendezvous at addr, if this daemon follows one there.
func (d *Daemon) linkAt(addr netip.AddrPort) *serverLink {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	d.linksMu.RLock()
	defer d.linksMu.RUnlock()
	for _, p := range d.links {
		for _, a := range serverAddrs(p.server()) {
			if a == addr {
				return p
			}
		}
	}
	return nil
}

// withCookie puts a fresh Busy cookie in front of a sealed keepalive.
func (p *serverLink) withCookie(sealed []byte, now time.Time) []byte {
	p.mu.Lock()
	ck, at := p.cookie, p.cookieAt
	p.mu.Unlock()
	if at.IsZero() || now.Sub(at) > cookieKeep {
		return sealed
	}
	return wire.AppendCookied(nil, ck, sealed)
}
