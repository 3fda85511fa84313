package wire

// Address validation. The rendezvous sends a client no more than the client
// sent it from an address until the client has shown that it receives
// there: it answers a Challenge that the rendezvous sent to that address
// with a ChallengeReply, sealed with its own key. A forged source address,
// or a keepalive replayed from one, then gets at most what it sent (the
// Pong and the Challenge together are smaller than a keepalive), as QUIC's
// address validation and WireGuard's cookies arrange.

// CookieLen is the length of a Challenge's cookie.
const CookieLen = 16

// Challenge asks the client to show that it receives at the address the
// rendezvous sees it at. The cookie is opaque to the client.
//
//	offset  size  field
//	0       1     type 0x0d
//	1       16    cookie
type Challenge struct {
	Cookie [CookieLen]byte
}

// cookie reads a Challenge's cookie.
func (r *reader) cookie() (c [CookieLen]byte) {
	copy(c[:], r.take(CookieLen))
	return c
}

// AppendPlaintext implements Message.
func (m *Challenge) AppendPlaintext(b []byte) []byte {
	return append(append(b, byte(TypeChallenge)), m.Cookie[:]...)
}

// ChallengeReply echoes a Challenge's cookie, sealed by the client: only a
// holder of the client key who received the Challenge can send it.
//
//	offset  size  field
//	0       1     type 0x0e
//	1       16    cookie, as the Challenge carried it
type ChallengeReply struct {
	Cookie [CookieLen]byte
}

// AppendPlaintext implements Message.
func (m *ChallengeReply) AppendPlaintext(b []byte) []byte {
	return append(append(b, byte(TypeChallengeReply)), m.Cookie[:]...)
}

// Validated tells the client that its address is shown to receive: it may
// stop sending keepalives to bring a new Challenge (its answer arrived).
//
//	offset  size  field
//	0       1     type 0x0f
type Validated struct{}

// AppendPlaintext implements Message.
func (m *Validated) AppendPlaintext(b []byte) []byte { return append(b, byte(TypeValidated)) }
