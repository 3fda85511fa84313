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
	// re-made it) goes first. The same peer may be a neighbour in another
	// repository too: that edge stays.
	var stale []uint64
	for id, old := range d.edges {
		if old.peer == m.Peer && old.link == p && old.repo == m.RepoID {
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
