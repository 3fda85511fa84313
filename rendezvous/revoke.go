package rendezvous

import (
	"time"

	"github.com/gitchat/gcn-punch/wire"
)

// Revoke forgets a client at once, for `gcn-punch revoke` (which has
// removed its authorisations from the store first): its subscriptions end,
// it leaves every tree, and its next keepalive, from a client the
// rendezvous does not know, reads the store, finds nothing, and is
// refused, which its daemon learns at once (a Ping asks it for that
// keepalive). It reports whether the client was live.
func (s *Server) Revoke(key wire.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unshareAuth(key) // and on every other node of a cluster
	return s.dropRevoked(key)
}

// dropRevoked forgets a client whose access ended and pings it, so that its
// daemon learns at once. Called with mu held.
func (s *Server) dropRevoked(key wire.Key) bool {
	c := s.clients[key]
	if c == nil {
		return false
	}
	s.forget(c, time.Now())
	if c.proven == c.addr {
		// A ping asks its daemon for a keepalive now, whose answer tells
		// it that it is not registered any more: it says so at once
		// instead of at its next keepalive.
		s.pingSeq++
		s.noteTo(c, c.conn, c.addr, &wire.Ping{Counter: s.pingSeq})
	}
	s.log.Info("client revoked", "client", key.String()[:16], "addr", c.addr)
	return true
}
