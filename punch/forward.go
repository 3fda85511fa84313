package punch

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

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
