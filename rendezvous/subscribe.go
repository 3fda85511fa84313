package rendezvous

import (
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// prefs is what a daemon asked for in its Subscribe: that its notifications
// carry the chat message (type 0x14), and for each repository the refs it
// wants. A client that never sent one (an older daemon) has none and gets
// every event as a plain Notify.
type prefs struct {
	messages bool
	refs     map[string][]string // repository id → patterns; absent: every ref
	// nodes: it reads Nodes (0x17); nodesSent is the version of the node
	// list it was sent last (scaleout.go).
	nodes     bool
	nodesSent uint32
}

// onSubscribe takes a daemon's preferences, from the address it has shown
// to receive at (an unproven one gets nothing: the daemon sends it again
// once validated), and confirms them. Called with mu held.
func (s *Server) onSubscribe(c *client, m *wire.Subscribe, src netip.AddrPort, now time.Time) []byte {
	if src != c.proven || src != c.addr {
		s.stats.Unexpected++
		return nil
	}
	c.seenFrom(src, now)
	p := &prefs{messages: m.Flags&wire.SubscribeMessages != 0, nodes: m.Flags&wire.SubscribeNodes != 0}
	for _, r := range m.Repos {
		if len(r.Refs) > 0 {
			if p.refs == nil {
				p.refs = map[string][]string{}
			}
			p.refs[r.RepoID] = r.Refs
		}
	}
	c.prefs = p
	s.stats.Subscribes++
	for _, su := range c.subs {
		switch {
		case su.node != nil && su.filtered():
			s.leaveTree(su, now) // served directly from now on (joinTree)
		case su.node != nil && su.r.tree != nil:
			su.r.tree.setOldReader(su.node, !p.messages)
		}
		if su.acked < su.r.head {
			s.pending.add(su) // what it lacks is looked at again under the new filter
		}
	}
	s.kickSender()
	s.offerNodes(c)
	// The address is proven: the confirmation may be larger than the request.
	return s.seal(&wire.Subscribed{Digest: m.Digest()}, c.key, &c.shared, wire.MaxDatagram)
}

// refFilter is the subscription's ref patterns, or nil when it gets every
// event: a tree member always does, since it forwards to its subtree.
func (su *sub) refFilter() []string {
	if su.node != nil || su.c.prefs == nil {
		return nil
	}
	return su.c.prefs.refs[su.r.id]
}

// filtered reports whether the client wants only some refs of the
// repository.
func (su *sub) filtered() bool {
	return su.c != nil && su.c.prefs != nil && len(su.c.prefs.refs[su.r.id]) > 0
}

// wanted reports whether the subscription wants event seq, which the
// repository holds.
func (su *sub) wanted(refs []string, seq, first uint64) bool {
	return refs == nil || wire.MatchAny(refs, su.r.events[seq-first].Ref)
}

// skipFiltered moves the subscription past the events at its front that
// its filter leaves out: the client needs nothing of them, so they are
// never sent and never wait for an ack. The client learns of the skip
// from the next event it is sent (its After field). Called with mu held.
func (s *Server) skipFiltered(su *sub, first uint64) {
	refs := su.refFilter()
	if refs == nil {
		return
	}
	for su.acked < su.r.head && su.acked+1 >= first && !su.wanted(refs, su.acked+1, first) {
		su.acked++
		if su.acked > su.sent {
			s.stats.Filtered++
		}
		su.sent = max(su.sent, su.acked)
	}
}
