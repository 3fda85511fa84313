package rendezvous

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
	"github.com/gitchat/gcn-punch/wire"
)

// Address validation: before the rendezvous sends a client more than the
// client sent it from an address (events, resync notices, edges, probes),
// the client shows that it receives there, by answering a Challenge sent
// to that address with a ChallengeReply sealed with its own key. A forged
// source address, or a keepalive replayed from one (even after a restart,
// when the replay guard's memory is gone), gets the Pong and the Challenge,
// together smaller than the keepalive, and nothing else.

// cookieEpoch is how long a cookie is good for: it is answered within a
// round trip, and a rotation every two minutes keeps a captured one from
// serving for long. The current and the previous epoch are accepted.
const cookieEpoch = 2 * time.Minute

// Cookie kinds: a Challenge's and a Busy's cookie for the same key and
// address differ, so that neither can stand for the other.
const (
	cookieChallenge byte = 'c'
	cookieBusy      byte = 'b'
)

// cookie is what a Challenge to the client key at addr carries in an
// epoch: a MAC under the rendezvous's secret, so nothing is stored.
func (s *Server) cookie(key wire.Key, addr netip.AddrPort, epoch int64) [wire.CookieLen]byte {
	return s.cookieOf(cookieChallenge, key, addr, epoch)
}

// cookieOf is the cookie of a kind for a key at an address in an epoch.
func (s *Server) cookieOf(kind byte, key wire.Key, addr netip.AddrPort, epoch int64) (c [wire.CookieLen]byte) {
	mac := hmac.New(sha256.New, s.cookieKey[:])
	var e [9]byte
	e[0] = kind
	binary.BigEndian.PutUint64(e[1:], uint64(epoch))
	mac.Write(e[:])
	mac.Write(key[:])
	a, _ := addr.MarshalBinary()
	mac.Write(a)
	copy(c[:], mac.Sum(nil))
	return c
}

func cookieEpochOf(now time.Time) int64 { return now.UnixNano() / int64(cookieEpoch) }

// cookieValid says whether ck is the cookie of a kind for key at addr in
// this epoch or the last.
func (s *Server) cookieValid(kind byte, ck [wire.CookieLen]byte, key wire.Key, addr netip.AddrPort, now time.Time) bool {
	e := cookieEpochOf(now)
	cur, prev := s.cookieOf(kind, key, addr, e), s.cookieOf(kind, key, addr, e-1)
	return hmac.Equal(ck[:], cur[:]) || hmac.Equal(ck[:], prev[:])
}

// challenge sends a Challenge to src when it fits in room (what is left of
// the request's size after the Pong). Called with mu held.
func (s *Server) challenge(c *client, src netip.AddrPort, room int, now time.Time) {
	s.challengeOn(c, c.conn, src, room, now)
}

// challengeOn is challenge, sent on a given socket.
func (s *Server) challengeOn(c *client, conn udpconn.Conn, src netip.AddrPort, room int, now time.Time) {
	ck := s.cookie(c.key, src, cookieEpochOf(now))
	b, err := s.sealer.Seal(nil, &wire.Challenge{Cookie: ck}, s.pub, &c.shared)
	if err != nil || len(b) > room {
		s.stats.Amplification++
		return
	}
	s.stats.Challenges++
	s.datagramsOut.Add(1)
	udpconn.WriteTo(conn, b, src)
}

// onChallengeReply takes a client's answer: from the address the challenge
// went to, with a cookie of this or the last epoch, the address is proven.
// What waited for it (events, the record, the tree) goes on. Called with
// mu held.
func (s *Server) onChallengeReply(c *client, m *wire.ChallengeReply, src netip.AddrPort, now time.Time) {
	sb := c.standby
	toStandby := sb != nil && src == sb.addr && sb.proven != src
	if (src != c.addr || c.proven == src) && !toStandby {
		return // an answer for an address the client has left, or a repeat
	}
	if !s.cookieValid(cookieChallenge, m.Cookie, c.key, src, now) {
		s.stats.Forged++
		return
	}
	if toStandby {
		s.onStandbyProven(c, src, now)
		return
	}
	rebound := c.proven.IsValid()
	c.proven = src
	c.lastSeen = now.UnixNano()
	s.stats.Validated++
	s.note(c, &wire.Validated{}) // the client stops rechecking
	s.queueRecord(c, now)
	switch {
	case s.fan == nil:
	case isStream(src):
		// Over SSH a client is a leaf served by the rendezvous: out of
		// every tree, and offered none.
		for _, su := range c.subs {
			if su.node != nil {
				s.leaveTree(su, now)
			}
		}
	case c.peer == nil:
		s.note(c, s.fanoutMsg())
	case rebound:
		s.rebound(c, now) // its tree neighbours need its new address
	}
	for _, su := range c.subs {
		if su.acked < su.r.head {
			su.nextSend = now.UnixNano()
			s.pending.add(su)
		}
	}
	s.kickSender()
}

// seenFrom counts a packet as a sign of life only from where the client
// has shown it receives: otherwise replayed acks from anywhere would keep a
// client that moved on "live".
func (c *client) seenFrom(src netip.AddrPort, now time.Time) {
	if src == c.proven {
		c.lastSeen = now.UnixNano()
	} else if sb := c.standby; sb != nil && src == sb.proven {
		sb.lastSeen = now.UnixNano()
	}
}
