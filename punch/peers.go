package punch

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/ice/v2"

	"github.com/gitchat/gcn-punch/wire"
)

// peerEdge is one tree neighbour in one repository.
type peerEdge struct {
	id     uint64
	link   *serverLink
	repo   string
	role   byte // wire.RoleParent: the peer is this daemon's parent
	peer   wire.Key
	shared [32]byte
	path   *peerPath
	// Under Daemon.edgesMu.
	addr      netip.AddrPort // the selected path; zero until connected
	kind      byte
	rtt       time.Duration
	state     byte
	forwarded uint64
	received  uint64
	lastSeen  time.Time
}

// peerPath is the one ICE path from this daemon to a peer, which every edge
// between the two uses: one per repository they both follow. ICE's mux
// sorts what it reads by remote address first, so two agents toward one
// address would take each other's answers, and their consent checks would
// fail in turns; one agent per peer has no such contest.
type peerPath struct {
	key    pathKey
	agent  *ice.Agent
	cancel context.CancelFunc
	done   chan struct{} // closed when the checks have ended, either way
	// Under Daemon.edgesMu.
	ok    bool
	addr  netip.AddrPort
	kind  byte
	rtt   time.Duration
	edges map[uint64]bool
}

// pathKey names a path: the peer, as told by one rendezvous.
type pathKey struct {
	link *serverLink
	peer wire.Key
}

// servesEdge says whether an edge's peer can be reached over this path:
// while it is still being formed, or when it goes to one of the addresses
// the edge gives for the peer (a peer that moved needs a new one).
func (pp *peerPath) servesEdge(m *wire.Edge) bool {
	if !pp.ok {
		select {
		case <-pp.done:
			return false // it failed
		default:
			return true
		}
	}
	for _, c := range m.Candidates {
		if c.Addr == pp.addr {
			return true
		}
	}
	return false
}

// fanoutState is a daemon's fan-out machinery, made when the first
// rendezvous offers fan-out.
type fanoutState struct {
	mc  *muxConn
	mux *ice.UDPMuxDefault
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
		if m.Role != wire.RoleDrop {
			// Taken part before, with the same key: say no, so that the
			// rendezvous serves this daemon directly.
			d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeFailed})
		}
		return
	}
	if d.rejoinIfForgotten(ctx, p) {
		return // the rendezvous makes every edge again once it hears the rejoin
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
	// An older edge to the same peer in the same repository (the rendezvous
	// re-made it) goes first; so does a path to the peer at an address it
	// has left, with its edges (the rendezvous re-makes those). The same
	// peer may be a neighbour in another repository too: that edge stays,
	// and the new one shares its path.
	var stale []uint64
	for id, old := range d.edges {
		if old.peer == m.Peer && old.link == p && old.repo == m.RepoID {
			stale = append(stale, id)
		}
	}
	key := pathKey{p, m.Peer}
	if pp := d.paths[key]; pp != nil && !pp.servesEdge(m) {
		for id := range pp.edges {
			stale = append(stale, id)
		}
	}
	d.edgesMu.Unlock()
	for _, id := range stale {
		d.dropEdge(id, true)
	}
	e := &peerEdge{id: m.ID, link: p, repo: m.RepoID, role: m.Role, peer: m.Peer, shared: wire.SharedKey(m.Peer, d.priv), state: wire.EdgeChecking}
	// Edges arrive one at a time, from the read loop: no other can make a
	// path to this peer meanwhile.
	d.edgesMu.Lock()
	pp := d.paths[key]
	d.edgesMu.Unlock()
	if pp == nil {
		fan := d.fanoutMachine()
		agent, err := newAgent(fan.mux, m, d.Interval(p.key))
		if err != nil {
			d.log.Warn("peer: cannot start ICE", "err", err)
			d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeFailed})
			return
		}
		pctx, cancel := context.WithTimeout(ctx, iceConnectTimeout)
		pp = &peerPath{key: key, agent: agent, cancel: cancel, done: make(chan struct{}), edges: make(map[uint64]bool)}
		d.edgesMu.Lock()
		d.paths[key] = pp
		d.edgesMu.Unlock()
		d.count(func(s *Stats) { s.PunchAttempts++ })
		d.edgeWG.Go(func() { d.connectPath(pctx, pp, m.Role, m.RemoteUfrag, m.RemotePwd, m.RepoID) })
	}
	d.edgesMu.Lock()
	if d.paths[key] != pp {
		// Its path ended between the two looks: say so; the rendezvous
		// makes the edge again or serves the child.
		d.edgesMu.Unlock()
		d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeFailed})
		return
	}
	e.path = pp
	pp.edges[m.ID] = true
	d.edges[m.ID] = e
	d.edgesMu.Unlock()
	d.send(p, &wire.EdgeState{ID: m.ID, State: wire.EdgeChecking})
	d.edgeWG.Go(func() { d.awaitPath(ctx, e) })
}

// connectPath runs ICE for a path: the parent of the edge that made it
// controls (Dial), the child is controlled (Accept); both start at once, as
// the rendezvous told both ends together.
func (d *Daemon) connectPath(ctx context.Context, pp *peerPath, role byte, ufrag, pwd, repo string) {
	defer close(pp.done)
	defer pp.cancel()
	start := time.Now()
	var err error
	if role == wire.RoleChild {
		_, err = pp.agent.Dial(ctx, ufrag, pwd)
	} else {
		_, err = pp.agent.Accept(ctx, ufrag, pwd)
	}
	var addr netip.AddrPort
	var kind byte
	var rtt time.Duration
	ok := false
	if err == nil {
		addr, kind, rtt, ok = selected(pp.agent)
	}
	peer := pp.key.peer.String()[:16]
	if !ok {
		if !errors.Is(ctx.Err(), context.Canceled) {
			d.log.Info("peer: no path formed", "peer", peer, "repo", repo, "err", err)
			d.count(func(s *Stats) { s.PunchFailed++ })
		}
		return
	}
	if rtt == 0 {
		rtt = time.Since(start) / 2 // two round trips formed it: a rough bound
	}
	d.edgesMu.Lock()
	pp.ok, pp.addr, pp.kind, pp.rtt = true, addr, kind, rtt
	d.edgesMu.Unlock()
	d.count(func(s *Stats) { s.Count(kind) })
	d.log.Info("peer: path formed", "peer", peer, "repo", repo, "role", roleName(role),
		"address", addr, "kind", wire.CandidateKindName(kind), "rtt", rtt, "took", time.Since(start).Round(time.Millisecond))
	pp.agent.OnConnectionStateChange(func(st ice.ConnectionState) {
		if st == ice.ConnectionStateFailed {
			d.log.Info("peer: path lost", "peer", peer)
			d.dropPath(pp)
		}
	})
}

// awaitPath waits for an edge's path to form, takes on its address, kind
// and RTT, and reports the edge to the rendezvous.
func (d *Daemon) awaitPath(ctx context.Context, e *peerEdge) {
	select {
	case <-e.path.done:
	case <-ctx.Done():
		return
	}
	d.edgesMu.Lock()
	if d.edges[e.id] != e {
		d.edgesMu.Unlock()
		return // dropped meanwhile
	}
	pp := e.path
	ok := pp.ok
	if ok {
		e.addr, e.kind, e.rtt, e.state, e.lastSeen = pp.addr, pp.kind, pp.rtt, wire.EdgeConnected, time.Now()
	}
	d.edgesMu.Unlock()
	if !ok {
		d.dropEdge(e.id, false)
		d.send(e.link, &wire.EdgeState{ID: e.id, State: wire.EdgeFailed})
		return
	}
	d.send(e.link, &wire.EdgeState{ID: e.id, State: wire.EdgeConnected, PathKind: e.kind, RTTMicro: uint32(e.rtt.Microseconds())})
}

// dropPath ends a path that ICE declared failed, and every edge on it,
// telling the rendezvous so that it serves or moves those children.
// Called from the agent's own callback: it must not wait for the agent.
func (d *Daemon) dropPath(pp *peerPath) {
	d.edgesMu.Lock()
	var lost []*peerEdge
	for id := range pp.edges {
		if e := d.edges[id]; e != nil && e.path == pp {
			lost = append(lost, e)
		}
	}
	d.edgesMu.Unlock()
	for _, e := range lost {
		if d.dropEdge(e.id, false) {
			d.send(e.link, &wire.EdgeState{ID: e.id, State: wire.EdgeFailed})
		}
	}
}

func roleName(r byte) string {
	if r == wire.RoleParent {
		return "parent"
	}
	return "child"
}

// dropEdge ends an edge; it reports whether there was one. The last edge
// on a path closes its agent. With wait, the agent is closed before it
// returns, so that a new agent toward the same peer never shares ICE's mux
// with a dying one (the mux sorts answers by remote address: the old agent
// would take the new one's answers). An agent's own callbacks must not
// wait: Close waits for them.
func (d *Daemon) dropEdge(id uint64, wait bool) bool {
	d.edgesMu.Lock()
	e := d.edges[id]
	delete(d.edges, id)
	var last *peerPath
	if e != nil {
		pp := e.path
		delete(pp.edges, id)
		if len(pp.edges) == 0 {
			if d.paths[pp.key] == pp {
				delete(d.paths, pp.key)
			}
			last = pp
		}
	}
	d.edgesMu.Unlock()
	if e == nil {
		return false
	}
	if last != nil {
		last.cancel()
		if wait {
			last.agent.Close()
		} else {
			go last.agent.Close()
		}
	}
	return true
}

// closeEdges ends every edge, path and the ICE mux, at stop.
func (d *Daemon) closeEdges() {
	d.edgesMu.Lock()
	paths := make([]*peerPath, 0, len(d.paths))
	for _, pp := range d.paths {
		paths = append(paths, pp)
	}
	clear(d.paths)
	clear(d.edges)
	fan := d.fan.Load()
	d.edgesMu.Unlock()
	var wg sync.WaitGroup
	for _, pp := range paths {
		pp.cancel()
		wg.Go(func() { pp.agent.Close() })
	}
	wg.Wait()
	if fan != nil {
		fan.mux.Close()
		fan.mc.Close()
	}
}
