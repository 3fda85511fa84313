package punch

import (
	"context"
	"crypto/ed25519"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// onFanout takes a rendezvous's offer of fan-out. The daemon answers with
// what it offers once it knows its NAT's behaviour: the first offer starts
// a probe (RFC 5780, a few seconds, on sockets of its own); later offers,
// which the rendezvous repeats with its pongs until it has the answer, are
// answered at once.
func (d *Daemon) onFanout(ctx context.Context, p *serverLink, m *wire.Fanout) {
	if d.cfg.NoPeer {
		return // a leaf served by the rendezvous: never answer
	}
	p.mu.Lock()
	p.signing = ed25519.PublicKey(append([]byte(nil), m.SigningKey[:]...))
	nat, started := p.nat, p.natProbed
	p.natProbed = true
	p.mu.Unlock()
	if nat != nil {
		d.send(p, d.peerInfo(nat))
		return
	}
	if started {
		return // the probe answers when it ends
	}
	d.edgeWG.Go(func() {
		d.send(p, d.peerInfo(d.measureNAT(ctx, p)))
	})
}

// measureNAT probes the NAT toward p's rendezvous and keeps the result.
func (d *Daemon) measureNAT(ctx context.Context, p *serverLink) *natBehaviour {
	nat := d.probeNAT(ctx, p.server().Addr)
	p.mu.Lock()
	p.nat = nat
	p.mu.Unlock()
	d.log.Info("peer: NAT behaviour", "server", p.server().Addr, "mapping", behaviourName(nat.Mapping), "filtering", behaviourName(nat.Filtering))
	return nat
}

// rejoinMinGap spaces a daemon's rejoins: the rendezvous repeats an Edge
// 5 times in 15 s, and one answered rejoin makes every edge again.
const rejoinMinGap = 5 * time.Second

// rejoinIfForgotten handles an Edge or a Forward from a rendezvous that
// this daemon never took a Fanout offer from: the rendezvous still counts
// it in its trees from before a restart. The daemon measures its NAT if it
// must and sends a PeerInfo that asks to rejoin. It reports whether the
// daemon lacks the signing key (and so cannot take an edge yet).
func (d *Daemon) rejoinIfForgotten(ctx context.Context, p *serverLink) bool {
	if d.cfg.NoPeer {
		return false
	}
	p.mu.Lock()
	if p.signing != nil {
		p.mu.Unlock()
		return false
	}
	now := time.Now()
	if now.Sub(p.rejoinAt) < rejoinMinGap {
		p.mu.Unlock()
		return true
	}
	p.rejoinAt = now
	nat, started := p.nat, p.natProbed
	p.natProbed = true
	p.mu.Unlock()
	rejoin := func(nat *natBehaviour) {
		m := d.peerInfo(nat)
		m.Flags |= wire.PeerFlagRejoin
		d.send(p, m)
	}
	switch {
	case nat != nil:
		rejoin(nat)
	case !started:
		d.log.Info("peer: the rendezvous counts this daemon in a tree from before; rejoining", "server", p.server().Addr)
		d.edgeWG.Go(func() {
			nat := d.measureNAT(ctx, p)
			rejoin(nat)
		})
	}
	return true
}

// natBehaviour is what the daemon measured of its NAT, in wire codes.
type natBehaviour struct{ Mapping, Filtering byte }

// probeNATTimeout bounds one NAT measurement: the probe takes about a
// second where every test answers and at most about 3 s.
const probeNATTimeout = 5 * time.Second

// probeNATTries and probeNATSpread: a measurement that learned nothing is
// tried again, after a random 1 to 4 s, twice. The rendezvous limits STUN
// per source address (20 at once, then 10 a second), and daemons behind one
// NAT that start together share that budget: spreading them out lets each
// measure.
const (
	probeNATTries  = 3
	probeNATSpread = 3 * time.Second
)

// probeNAT measures the NAT's mapping and filtering toward the rendezvous
// (unknown where the rendezvous has no second address; the mapping
// endpoint-independent when there is no NAT at all).
func (d *Daemon) probeNAT(ctx context.Context, server netip.AddrPort) *natBehaviour {
	code := func(s *string) byte {
		switch {
		case s == nil:
			return wire.BehaviourUnknown
		case *s == EndpointIndependent:
			return wire.EndpointIndependent
		case *s == AddressDependent:
			return wire.AddressDependent
		}
		return wire.AddressAndPortDependent
	}
	nat := &natBehaviour{}
	for try := range probeNATTries {
		if try > 0 {
			wait := time.Second + rand.N(probeNATSpread)
			select {
			case <-ctx.Done():
				return nat
			case <-time.After(wait):
			}
		}
		pctx, cancel := context.WithTimeout(ctx, probeNATTimeout)
		r, _ := Probe(pctx, ProbeOptions{Server: server})
		cancel()
		if r.NoNAT {
			// No translation, so the mapping is endpoint-independent; but
			// a firewall may still filter (an IPv6 home router does), so
			// the filtering is what was measured, if anything.
			return &natBehaviour{Mapping: wire.EndpointIndependent, Filtering: code(r.Filtering)}
		}
		nat = &natBehaviour{Mapping: code(r.Mapping), Filtering: code(r.Filtering)}
		if r.UDP && r.OtherAddress == "" {
			return nat // no RFC 5780 here: trying again learns nothing more
		}
		if nat.Mapping != wire.BehaviourUnknown && nat.Filtering != wire.BehaviourUnknown {
			return nat
		}
	}
	return nat
}

func behaviourName(b byte) string {
	switch b {
	case wire.EndpointIndependent:
		return EndpointIndependent
	case wire.AddressDependent:
		return AddressDependent
	case wire.AddressAndPortDependent:
		return AddressAndPortDependent
	}
	return "unknown"
}

// peerInfo is this daemon's offer: it may parent unless its NAT maps per
// destination (a child could not reach the mapping its candidates name).
func (d *Daemon) peerInfo(nat *natBehaviour) *wire.PeerInfo {
	var flags byte
	if nat.Mapping != wire.AddressDependent && nat.Mapping != wire.AddressAndPortDependent {
		flags = wire.PeerFlagParent
	}
	return &wire.PeerInfo{Flags: flags, Mapping: nat.Mapping, Filtering: nat.Filtering, Host: d.hostCandidates()}
}

// hostCandidates are this machine's own addresses with the socket's port:
// how a peer behind the same NAT reaches it. Loopback, link-local and
// multicast addresses are left out; at most wire.MaxHostCands.
func (d *Daemon) hostCandidates() []netip.AddrPort {
	local := d.cfg.Conn.LocalAddrPort()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsUnspecified() {
			continue
		}
		if l := local.Addr(); !l.IsUnspecified() && l != ip {
			continue // bound to one address: only that one
		}
		if local.Addr().Is4() && ip.Is6() {
			continue // an IPv4 socket
		}
		out = append(out, netip.AddrPortFrom(ip, local.Port()))
		if len(out) == wire.MaxHostCands {
			break
		}
	}
	return out
}
