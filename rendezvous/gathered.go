package rendezvous

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Gathered acks (wire/gather.go). A tree member whose edge to its parent is
// marked EdgeGather hands its ack, sealed to the rendezvous, to its parent,
// which sends its children's together: the rendezvous reads one datagram
// per parent instead of one per member. Each ack inside is opened with its
// own member's key and taken as if it had come alone, so the parent can
// only drop or delay it, which the member's tree deadline covers.

// onAcks takes the acks a parent gathered from its children. The datagram
// came from parent's proven address (seenFrom checks), which it keeps live.
// Called with mu held.
func (s *Server) onAcks(parent *client, m *wire.Acks, src netip.AddrPort, now time.Time) {
	parent.seenFrom(src, now)
	s.stats.AckBatches++
	for _, d := range m.Datagrams {
		s.onRelayedAck(parent, d, src, now)
	}
}

// onRelayedAck opens one member's ack that parent carried. It counts only
// from a live client whose parent in that repository's tree is parent: a
// member that moved meanwhile is served by its deadline, and no client can
// pass on acks of members it was never given.
func (s *Server) onRelayedAck(parent *client, d []byte, src netip.AddrPort, now time.Time) {
	sender, _, _, err := wire.ParseHeader(d)
	child := s.clients[sender]
	if err != nil || child == nil {
		// Never a key precomputation here: a member is known, or it is
		// not one.
		s.stats.Unexpected++
		return
	}
	_, msg, err := s.opener.Open(d, &child.shared)
	if err != nil {
		s.stats.Forged++
		s.logForged(sender, src, now)
		return
	}
	ack, ok := msg.(*wire.Ack)
	if !ok {
		s.stats.Unexpected++
		return
	}
	su := child.sub(ack.RepoID)
	if su == nil || su.node == nil || su.node.parent == nil || su.node.parent.su.c != parent {
		s.stats.Unexpected++
		return
	}
	s.stats.AcksRelayed++
	s.onAck(child, ack, netip.AddrPort{}, now)
}
