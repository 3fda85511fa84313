package punch

import (
	"context"
	"crypto/ed25519"
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/ice/v2"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Peer-to-peer fan-out, the daemon's side. A rendezvous that builds trees
// says so (Fanout, with the key that signs its events); the daemon offers
// itself (PeerInfo), and the rendezvous tells it its parent and children
// per repository (Edge). ICE forms each edge's path on the daemon's one
// socket; a signed event handled in order is forwarded to the children. An
// event from a peer counts only with the server's signature, for a followed
// repository, from the peer the rendezvous made this daemon's parent; and
// the daemon acks the rendezvous itself, as for any event.

// peerEdge is one tree neighbour in one repository.
type peerEdge struct {
	id     uint64
	link   *serverLink
	repo   string
	role   byte // wire.RoleParent: the peer is this daemon's parent
	peer   wire.Key
	shared [32]byte
	agent  *ice.Agent
	cancel context.CancelFunc
	// Under Daemon.edgesMu.
	addr      netip.AddrPort // the selected path; zero until connected
	kind      byte
	rtt       time.Duration
	state     byte
	forwarded uint64
	received  uint64
	lastSeen  time.Time
}

// fanoutState is a daemon's fan-out machinery, made when the first
// rendezvous offers fan-out.
type fanoutState struct {
	mc  *muxConn
	mux *ice.UDPMuxDefault
}

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
		nat := d.probeNAT(ctx, p.server().Addr)
		p.mu.Lock()
		p.nat = nat
		p.mu.Unlock()
		d.log.Info("peer: NAT behaviour", "server", p.server().Addr, "mapping", behaviourName(nat.Mapping), "filtering", behaviourName(nat.Filtering))
		d.send(p, d.peerInfo(nat))
	})
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
// (unknown where the rendezvous has no second address; endpoint-independent
// when there is no NAT at all).
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
			return &natBehaviour{Mapping: wire.EndpointIndependent, Filtering: wire.EndpointIndependent}
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

// fanoutMachine makes the ICE mux on first use.
func (d *Daemon) fanoutMachine() *fanoutState {
	d.edgesMu.Lock()
	defer d.edgesMu.Unlock()
	if f := d.fan.Load(); f != nil {
		return f
	}
	mc := newMuxConn(d.cfg.Conn)
	f := &fanoutState{mc: mc, mux: ice.NewUDPMuxDefault(ice.UDPMuxParams{UDPConn: mc, Logger: iceLogs.NewLogger("mux")})}
	d.fan.Store(f)
	return f
}

// onEdge takes a tree neighbour, or its end, from the rendezvous.
func (d *Daemon) onEdge(ctx context.Context, p *serverLink, m *wire.Edge) {
	if d.cfg.NoPeer {
		return
	}
	if m.Role == wire.RoleDrop {
		d.dropEdge(m.ID, true)
		d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeDropped})
		return
	}
	if !d.follows(p, m.RepoID) {
		d.count(func(s *Stats) { s.Unexpected++ })
		return
	}
	d.edgesMu.Lock()
	if e := d.edges[m.ID]; e != nil {
		state, kind, rtt := e.state, e.kind, e.rtt
		d.edgesMu.Unlock()
		// A repeat: the rendezvous missed the report.
		d.send(p, &wire.EdgeState{ID: m.ID, State: state, PathKind: kind, RTTMicro: uint32(rtt.Microseconds())})
		return
	}
	// An older edge to the same peer (the rendezvous re-made it) goes first.
	var stale []uint64
	for id, old := range d.edges {
		if old.peer == m.Peer && old.link == p {
			stale = append(stale, id)
		}
	}
	d.edgesMu.Unlock()
	for _, id := range stale {
		d.dropEdge(id, true)
	}
	fan := d.fanoutMachine()
	agent, err := newAgent(fan.mux, m, d.Interval(p.key))
	if err != nil {
		d.log.Warn("peer: cannot start ICE", "err", err)
		d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeFailed})
		return
	}
	ectx, cancel := context.WithTimeout(ctx, iceConnectTimeout)
	e := &peerEdge{id: m.ID, link: p, repo: m.RepoID, role: m.Role, peer: m.Peer, shared: wire.SharedKey(m.Peer, d.priv),
		agent: agent, cancel: cancel, state: wire.EdgeChecking}
	d.edgesMu.Lock()
	d.edges[m.ID] = e
	d.edgesMu.Unlock()
	d.count(func(s *Stats) { s.PunchAttempts++ })
	d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeChecking})
	d.edgeWG.Go(func() { d.connectEdge(ectx, e, m.RemoteUfrag, m.RemotePwd) })
}

// connectEdge runs ICE for one edge: the parent controls (Dial), the child
// is controlled (Accept); both start at once, as the rendezvous told both
// ends together. It reports the outcome to the rendezvous.
func (d *Daemon) connectEdge(ctx context.Context, e *peerEdge, ufrag, pwd string) {
	defer e.cancel()
	start := time.Now()
	var err error
	if e.role == wire.RoleChild {
		_, err = e.agent.Dial(ctx, ufrag, pwd)
	} else {
		_, err = e.agent.Accept(ctx, ufrag, pwd)
	}
	var addr netip.AddrPort
	var kind byte
	var rtt time.Duration
	ok := false
	if err == nil {
		addr, kind, rtt, ok = selected(e.agent)
	}
	if !ok {
		if errors.Is(ctx.Err(), context.Canceled) && d.edge(e.id) == nil {
			return // dropped meanwhile
		}
		d.log.Info("peer: no path formed", "peer", e.peer.String()[:16], "repo", e.repo, "err", err)
		d.count(func(s *Stats) { s.PunchFailed++ })
		d.dropEdge(e.id, false)
		d.send(e.link, &wire.EdgeState{ID: e.id, State: wire.EdgeFailed})
		return
	}
	if rtt == 0 {
		rtt = time.Since(start) / 2 // two round trips formed it: a rough bound
	}
	d.edgesMu.Lock()
	e.addr, e.kind, e.rtt, e.state, e.lastSeen = addr, kind, rtt, wire.EdgeConnected, time.Now()
	d.edgesMu.Unlock()
	d.count(func(s *Stats) { s.Count(kind) })
	d.log.Info("peer: path formed", "peer", e.peer.String()[:16], "repo", e.repo, "role", roleName(e.role),
		"address", addr, "kind", wire.CandidateKindName(kind), "rtt", rtt, "took", time.Since(start).Round(time.Millisecond))
	e.agent.OnConnectionStateChange(func(st ice.ConnectionState) {
		if st == ice.ConnectionStateFailed {
			if d.dropEdge(e.id, false) {
				d.log.Info("peer: path lost", "peer", e.peer.String()[:16], "repo", e.repo)
				d.send(e.link, &wire.EdgeState{ID: e.id, State: wire.EdgeFailed})
			}
		}
	})
	d.send(e.link, &wire.EdgeState{ID: e.id, State: wire.EdgeConnected, PathKind: kind, RTTMicro: uint32(rtt.Microseconds())})
}

func roleName(r byte) string {
	if r == wire.RoleParent {
		return "parent"
	}
	return "child"
}

func (d *Daemon) edge(id uint64) *peerEdge {
	d.edgesMu.Lock()
	defer d.edgesMu.Unlock()
	return d.edges[id]
}

// dropEdge ends an edge; it reports whether there was one. With wait, the
// agent is closed before it returns, so that a new agent toward the same
// peer never shares ICE's mux with a dying one (the mux sorts answers by
// remote address: the old agent would take the new one's answers). An
// agent's own callbacks must not wait: Close waits for them.
func (d *Daemon) dropEdge(id uint64, wait bool) bool {
	d.edgesMu.Lock()
	e := d.edges[id]
	delete(d.edges, id)
	d.edgesMu.Unlock()
	if e == nil {
		return false
	}
	e.cancel()
	if wait {
		e.agent.Close()
	} else {
		go e.agent.Close()
	}
	return true
}

// closeEdges ends every edge and the ICE mux, at stop.
func (d *Daemon) closeEdges() {
	d.edgesMu.Lock()
	ids := make([]uint64, 0, len(d.edges))
	for id := range d.edges {
		ids = append(ids, id)
	}
	fan := d.fan.Load()
	d.edgesMu.Unlock()
	var wg sync.WaitGroup
	for _, id := range ids {
		d.edgesMu.Lock()
		e := d.edges[id]
		delete(d.edges, id)
		d.edgesMu.Unlock()
		if e != nil {
			e.cancel()
			wg.Go(func() { e.agent.Close() })
		}
	}
	wg.Wait()
	if fan != nil {
		fan.mux.Close()
		fan.mc.Close()
	}
}

// handlePeer takes a datagram from a key that is not a rendezvous's: it
// counts only as a signed event from this daemon's parent in that
// repository. It reports whether the sender is a known peer.
func (d *Daemon) handlePeer(b []byte, sender wire.Key) bool {
	d.edgesMu.Lock()
	var cands []*peerEdge
	for _, e := range d.edges {
		if e.peer == sender {
			cands = append(cands, e)
		}
	}
	d.edgesMu.Unlock()
	if len(cands) == 0 {
		return false
	}
	_, msg, err := wire.Open(b, &cands[0].shared)
	if err != nil {
		d.countOpenFailure(err)
		return true
	}
	f, ok := msg.(*wire.Forward)
	if !ok {
		d.count(func(s *Stats) { s.Unexpected++ })
		return true
	}
	var from *peerEdge
	for _, e := range cands {
		if e.role == wire.RoleParent && e.repo == f.RepoID {
			from = e
		}
	}
	if from == nil {
		d.count(func(s *Stats) { s.Unexpected++ }) // not this daemon's parent in that repository
		return true
	}
	if !d.signedByServer(from.link, f) {
		d.count(func(s *Stats) { s.Forged++ })
		return true
	}
	d.edgesMu.Lock()
	from.received++
	from.lastSeen = time.Now()
	d.edgesMu.Unlock()
	d.count(func(s *Stats) { s.FromPeer++ })
	d.onEvent(from.link, f)
	return true
}

// signedByServer reports whether f carries the rendezvous's signature.
func (d *Daemon) signedByServer(p *serverLink, f *wire.Forward) bool {
	p.mu.Lock()
	key := p.signing
	p.mu.Unlock()
	return key != nil && f.Verify(key)
}

// forward sends signed events, handled in order, to this daemon's children
// in their repository.
func (d *Daemon) forward(p *serverLink, evs []*wire.Forward) {
	if len(evs) == 0 {
		return
	}
	repo := evs[0].RepoID
	if d.forwardHook != nil {
		evs = d.forwardHook(evs) // tests only: a hostile parent
	}
	type target struct {
		e    *peerEdge
		addr netip.AddrPort
	}
	var to []target
	d.edgesMu.Lock()
	for _, e := range d.edges {
		if e.link == p && e.role == wire.RoleChild && e.repo == repo && e.addr.IsValid() {
			to = append(to, target{e, e.addr})
			e.forwarded += uint64(len(evs))
		}
	}
	d.edgesMu.Unlock()
	var sealer wire.Sealer
	for _, t := range to {
		for _, f := range evs {
			b, err := sealer.Seal(nil, f, d.pub, &t.e.shared)
			if err != nil {
				continue
			}
			if udpconn.WriteTo(d.cfg.Conn, b, t.addr) == nil {
				d.count(func(s *Stats) { s.Forwarded++ })
			}
		}
	}
}

// PeerStatus is one tree neighbour as `gcn-punch status --state` shows it.
type PeerStatus struct {
	Peer      string    `json:"peer"` // its key, short
	Path      string    `json:"path"` // host|srflx|prflx|relay, "" while checking
	Address   string    `json:"address,omitempty"`
	RTTMicro  int64     `json:"rtt_us,omitempty"`
	Forwarded uint64    `json:"forwarded"` // events sent to it (children)
	Received  uint64    `json:"received"`  // events taken from it (parent)
	LastSeen  time.Time `json:"last_seen,omitzero"`
}

// peerStatus lists a repository's parent and children on one link.
func (d *Daemon) peerStatus(p *serverLink, repo string) (parent *PeerStatus, children []PeerStatus) {
	d.edgesMu.Lock()
	defer d.edgesMu.Unlock()
	for _, e := range d.edges {
		if e.link != p || e.repo != repo {
			continue
		}
		ps := PeerStatus{Peer: e.peer.String()[:16], Path: wire.CandidateKindName(e.kind), RTTMicro: e.rtt.Microseconds(),
			Forwarded: e.forwarded, Received: e.received, LastSeen: e.lastSeen}
		if e.addr.IsValid() {
			ps.Address = e.addr.String()
		}
		if e.role == wire.RoleParent {
			parent = &ps
		} else {
			children = append(children, ps)
		}
	}
	return parent, children
}
