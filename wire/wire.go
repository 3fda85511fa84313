// Package wire encodes and decodes every gcn-punch datagram, sealed with NaCl box.
package wire

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/crypto/curve25519"
	"golang.org/x/crypto/nacl/box"
)

// Envelope layout, shared by every gcn-punch datagram:
//
//	offset  size  field
//	0       3     magic "gcn" (0x67 0x63 0x6e)
//	3       1     version (1)
//	4       32    sender's NaCl box public key
//	36      24    nonce (random)
//	60      n+16  box(plaintext) from sender to recipient; plaintext[0] is the message type
//
// The first byte 0x67 lies in the range RFC 7983 leaves unassigned, so the
// same UDP port can also carry STUN (first byte 0..3) and, later, ICE and DTLS.
const (
	Magic        = "gcn"
	Version      = 1
	KeyLen       = 32
	NonceLen     = 24
	HeaderLen    = len(Magic) + 1 + KeyLen + NonceLen // 60
	Overhead     = HeaderLen + box.Overhead           // 76: bytes a message costs beyond its plaintext
	MaxDatagram  = 1200                               // fits the IPv6 minimum MTU with room for tunnels
	MaxPlaintext = MaxDatagram - Overhead             // 1124
	MaxRepoID    = 100
	MaxRef       = 1000
	MaxSubs      = 16 // repositories one keepalive may carry
	// MinKeepalivePlaintext pads keepalives so that the rendezvous's reply
	// (a Pong) is never larger than the request that caused it.
	MinKeepalivePlaintext = 1 + 8 + 1 + 16 + 2 + 4 + 1 + MaxSubs*9
)

// Errors returned by the decoders. Callers count them by identity.
var (
	ErrShort        = errors.New("wire: datagram truncated")
	ErrTooLarge     = errors.New("wire: datagram larger than 1200 bytes")
	ErrNotGCN       = errors.New("wire: not a gcn-punch datagram (bad magic)")
	ErrVersion      = errors.New("wire: unknown protocol version")
	ErrAuth         = errors.New("wire: box authentication failed (forged or wrong key)")
	ErrUnknownType  = errors.New("wire: unknown message type")
	ErrTrailing     = errors.New("wire: trailing bytes after message")
	ErrField        = errors.New("wire: invalid field")
	ErrRepoID       = errors.New("wire: invalid repository id")
	ErrRef          = errors.New("wire: invalid ref name")
	ErrMessageLarge = errors.New("wire: message does not fit in one 1200-byte datagram")
)

// Key is a NaCl box (Curve25519) public key; a client's key is its identity.
type Key [KeyLen]byte

// String returns the key as 64 lowercase hex characters.
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// IsZero reports whether k is all zeros.
func (k Key) IsZero() bool { return k == Key{} }

// ParseKey parses 64 hex characters (surrounding white space is ignored).
func ParseKey(s string) (Key, error) {
	var k Key
	s = strings.TrimSpace(s)
	if len(s) != 2*KeyLen {
		return k, fmt.Errorf("%w: key must be 64 hex characters, got %d", ErrField, len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return k, fmt.Errorf("%w: key is not hex: %v", ErrField, err)
	}
	return k, nil
}

// GenerateKey makes a new box key pair.
func GenerateKey() (pub, priv Key, err error) {
	p, s, err := box.GenerateKey(rand.Reader)
	if err != nil {
		return pub, priv, err
	}
	return *p, *s, nil
}

// PublicKey derives the public key of a private key.
func PublicKey(priv Key) Key {
	var pub Key
	curve25519.ScalarBaseMult((*[32]byte)(&pub), (*[32]byte)(&priv))
	return pub
}

// SharedKey precomputes the box key between a peer's public key and our private key.
func SharedKey(peer, priv Key) [32]byte {
	var shared [32]byte
	box.Precompute(&shared, (*[32]byte)(&peer), (*[32]byte)(&priv))
	return shared
}

// LooksLikeGCN reports whether b starts with the gcn-punch magic. It is the
// demultiplexer's test; it does not validate anything else.
func LooksLikeGCN(b []byte) bool {
	return len(b) >= len(Magic) && string(b[:len(Magic)]) == Magic
}

// LooksLikeSTUN reports whether b looks like a STUN message: at least a
// header, the first two bits zero and the magic cookie at bytes 4..8 (RFC
// 5389 §6). Both ends sort their one UDP port's traffic with it; gcn
// datagrams start with "gcn", never with two zero bits.
func LooksLikeSTUN(b []byte) bool {
	return len(b) >= 20 && b[0]&0xc0 == 0 && binary.BigEndian.Uint32(b[4:8]) == stunMagicCookie
}

// stunMagicCookie is the fixed STUN cookie (RFC 5389 §6).
const stunMagicCookie = 0x2112A442

// ParseHeader checks the envelope and returns the sender's key, the nonce and
// the sealed box. It does no cryptography, so it is cheap to run on any input.
func ParseHeader(b []byte) (sender Key, nonce [NonceLen]byte, sealed []byte, err error) {
	if len(b) > MaxDatagram {
		return sender, nonce, nil, ErrTooLarge
	}
	if len(b) < len(Magic) || !LooksLikeGCN(b) {
		return sender, nonce, nil, ErrNotGCN
	}
	if len(b) < HeaderLen+box.Overhead+1 {
		return sender, nonce, nil, ErrShort
	}
	if b[3] != Version {
		return sender, nonce, nil, ErrVersion
	}
	copy(sender[:], b[4:36])
	copy(nonce[:], b[36:60])
	return sender, nonce, b[HeaderLen:], nil
}

// Seal appends the sealed datagram carrying m, from sender to the peer whose
// shared key is given, onto dst. The nonce is random.
func Seal(dst []byte, m Message, sender Key, shared *[32]byte) ([]byte, error) {
	var nonce [NonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return dst, err
	}
	return SealWithNonce(dst, m, sender, &nonce, shared)
}

// SealWithNonce is Seal with a caller-chosen nonce; tests use it for golden vectors.
func SealWithNonce(dst []byte, m Message, sender Key, nonce *[NonceLen]byte, shared *[32]byte) ([]byte, error) {
	return new(Sealer).sealWithNonce(dst, m, sender, nonce, shared)
}

// Sealer seals messages reusing one plaintext buffer, so a hot path does
// not allocate per datagram. It is not safe for concurrent use.
type Sealer struct {
	plain [MaxPlaintext + 64]byte
}

// Seal is the package-level Seal, without its per-call buffer.
func (s *Sealer) Seal(dst []byte, m Message, sender Key, shared *[32]byte) ([]byte, error) {
	var nonce [NonceLen]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return dst, err
	}
	return s.sealWithNonce(dst, m, sender, &nonce, shared)
}

func (s *Sealer) sealWithNonce(dst []byte, m Message, sender Key, nonce *[NonceLen]byte, shared *[32]byte) ([]byte, error) {
	plain := m.AppendPlaintext(s.plain[:0])
	if len(plain) > MaxPlaintext {
		return dst, ErrMessageLarge
	}
	dst = append(dst, Magic...)
	dst = append(dst, Version)
	dst = append(dst, sender[:]...)
	dst = append(dst, nonce[:]...)
	return box.SealAfterPrecomputation(dst, plain, nonce, shared), nil
}

// Open authenticates and decodes a whole datagram whose sender's shared key is
// known. It returns the sender's key with the message.
func Open(b []byte, shared *[32]byte) (Key, Message, error) {
	return new(Opener).Open(b, shared)
}

// Opener opens datagrams reusing one plaintext buffer. It is not safe for
// concurrent use. Decoded messages do not refer to its buffer, but an *Ack
// it returns is its own, overwritten by its next Open: a rendezvous opens
// one per follower per event, and takes what it needs from it at once.
type Opener struct {
	plain [MaxDatagram]byte
	// ids are the repository ids it has decoded (each valid), so that the
	// messages that come from every follower (acks, keepalives) name their
	// repository without a new string, or checking it again.
	ids map[string]string
	ack Ack
}

// maxOpenerIDs bounds an Opener's ids: a rendezvous serves a few
// repositories, and beyond this many each id is decoded anew.
const maxOpenerIDs = 1024

// Open is the package-level Open, without its per-call buffer.
func (o *Opener) Open(b []byte, shared *[32]byte) (Key, Message, error) {
	sender, nonce, sealed, err := ParseHeader(b)
	if err != nil {
		return sender, nil, err
	}
	plain, ok := box.OpenAfterPrecomputation(o.plain[:0], sealed, &nonce, shared)
	if !ok {
		return sender, nil, ErrAuth
	}
	m, err := parsePlaintext(plain, o)
	return sender, m, err
}

// Type identifies a message; it is the first plaintext byte.
type Type byte

// Message types.
const (
	TypeKeepalive Type = 0x01 // client → rendezvous
	TypePong      Type = 0x02 // rendezvous → client, answers a keepalive
	TypeNotify    Type = 0x03 // rendezvous → client, one ref update
	TypeAck       Type = 0x04 // client → rendezvous, cumulative ack
	TypeResync    Type = 0x05 // rendezvous → client, events were lost to retention
	TypePing      Type = 0x06 // rendezvous → client, "send a keepalive now"
	// TypeKeepaliveQuiet is a keepalive whose sender needs no pong: the
	// same layout as TypeKeepalive.
	TypeKeepaliveQuiet Type = 0x07 // client → rendezvous
	// Peer-to-peer fan-out (peer.go).
	TypeForward   Type = 0x08 // rendezvous or parent → daemon: a server-signed event
	TypeFanout    Type = 0x09 // rendezvous → daemon: fan-out is on; the signing key
	TypePeerInfo  Type = 0x0a // daemon → rendezvous: its offer as a peer
	TypeEdge      Type = 0x0b // rendezvous → daemon: a tree neighbour, or its end
	TypeEdgeState Type = 0x0c // daemon → rendezvous: how an edge fares
	// Address validation (challenge.go).
	TypeChallenge      Type = 0x0d // rendezvous → client: show that you receive here
	TypeChallengeReply Type = 0x0e // client → rendezvous: the cookie, under the client's key
	TypeValidated      Type = 0x0f // rendezvous → client: the address is shown to receive
	// A dual-stack client's keepalives on its other address family
	// (messages.go): the same layout as TypeKeepalive. 0x10 is reserved.
	TypeKeepaliveStandby      Type = 0x11 // client → rendezvous
	TypeKeepaliveStandbyQuiet Type = 0x12 // client → rendezvous, no pong wanted
)

// Message is any decoded plaintext message.
type Message interface {
	// AppendPlaintext appends the type byte and the message body to b.
	AppendPlaintext(b []byte) []byte
}

// ParsePlaintext decodes an opened plaintext. It rejects unknown types,
// truncation, trailing bytes and invalid fields.
func ParsePlaintext(p []byte) (Message, error) {
	return parsePlaintext(p, nil)
}

// parsePlaintext is ParsePlaintext, taking repository ids from o's and its
// Ack into o's when o is not nil.
func parsePlaintext(p []byte, o *Opener) (Message, error) {
	if len(p) == 0 {
		return nil, ErrShort
	}
	r := reader{b: p[1:], o: o}
	var m Message
	switch Type(p[0]) {
	case TypeKeepalive, TypeKeepaliveQuiet, TypeKeepaliveStandby, TypeKeepaliveStandbyQuiet:
		k := parseKeepalive(&r)
		t := Type(p[0])
		k.Quiet = t == TypeKeepaliveQuiet || t == TypeKeepaliveStandbyQuiet
		k.Standby = t == TypeKeepaliveStandby || t == TypeKeepaliveStandbyQuiet
		m = k
	case TypePong:
		m = parsePong(&r)
	case TypeNotify, TypeNotifyMsg:
		m = parseNotify(&r, Type(p[0]) == TypeNotifyMsg)
	case TypeAck:
		if o != nil {
			parseAckInto(&r, &o.ack)
			m = &o.ack
		} else {
			m = parseAck(&r)
		}
	case TypeResync:
		m = parseResync(&r)
	case TypePing:
		m = &Ping{Counter: r.u64()}
	case TypeForward, TypeForwardMsg:
		m = parseForward(&r, Type(p[0]) == TypeForwardMsg)
	case TypeFanout:
		m = parseFanout(&r)
	case TypePeerInfo:
		m = parsePeerInfo(&r)
	case TypeEdge:
		m = parseEdge(&r)
	case TypeEdgeState:
		m = parseEdgeState(&r)
	case TypeChallenge:
		m = &Challenge{Cookie: r.cookie()}
	case TypeChallengeReply:
		m = &ChallengeReply{Cookie: r.cookie()}
	case TypeValidated:
		m = &Validated{}
	case TypeSubscribe:
		m = parseSubscribe(&r)
	case TypeNodes:
		m = parseNodes(&r)
	case TypeSubscribed:
		var d Subscribed
		copy(d.Digest[:], r.take(SubscribeDigest))
		m = &d
	default:
		return nil, ErrUnknownType
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.b) != 0 {
		return nil, ErrTrailing
	}
	return m, nil
}

// ValidRepoID reports whether id can name a repository: 1 to 100 bytes of
// [A-Za-z0-9._-] in '/'-separated segments, none empty, "." or "..".
func ValidRepoID(id string) error {
	if len(id) == 0 || len(id) > MaxRepoID {
		return fmt.Errorf("%w: length %d not in 1..%d", ErrRepoID, len(id), MaxRepoID)
	}
	for seg := range strings.SplitSeq(id, "/") { // allocates nothing: every datagram with a repository checks it
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q has an empty, '.' or '..' segment", ErrRepoID, id)
		}
		for _, c := range []byte(seg) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
				return fmt.Errorf("%w: %q contains %q", ErrRepoID, id, c)
			}
		}
	}
	return nil
}

// ValidRef reports whether ref is a plausible full git ref name: it starts
// with "refs/", is at most 1000 bytes and has no control characters, spaces
// or NUL (git check-ref-format forbids them too).
func ValidRef(ref string) error {
	if !strings.HasPrefix(ref, "refs/") || len(ref) > MaxRef || len(ref) <= len("refs/") {
		return fmt.Errorf("%w: %q must start with refs/ and be at most %d bytes", ErrRef, ref, MaxRef)
	}
	for _, c := range []byte(ref) {
		if c <= ' ' || c == 0x7f {
			return fmt.Errorf("%w: %q contains a control character or space", ErrRef, ref)
		}
	}
	return nil
}

// reader decodes big-endian fields and remembers the first error.
type reader struct {
	b   []byte
	err error
	o   *Opener // its repository ids, if not nil
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = ErrShort
		r.b = nil
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() byte {
	if v := r.take(1); v != nil {
		return v[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if v := r.take(2); v != nil {
		return binary.BigEndian.Uint16(v)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if v := r.take(4); v != nil {
		return binary.BigEndian.Uint32(v)
	}
	return 0
}

func (r *reader) u64() uint64 {
	if v := r.take(8); v != nil {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func (r *reader) key() (k Key) {
	copy(k[:], r.take(KeyLen))
	return k
}

func (r *reader) fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// repoID reads a u8-length-prefixed repository id and validates it.
func (r *reader) repoID() string {
	b := r.take(int(r.u8()))
	if r.o != nil && r.err == nil {
		if s, ok := r.o.ids[string(b)]; ok { // a lookup that allocates nothing
			return s
		}
	}
	s := string(b)
	if r.err == nil {
		if err := ValidRepoID(s); err != nil {
			r.fail(err)
		} else if r.o != nil && len(r.o.ids) < maxOpenerIDs {
			if r.o.ids == nil {
				r.o.ids = make(map[string]string)
			}
			r.o.ids[s] = s
		}
	}
	return s
}

func appendRepoID(b []byte, id string) []byte {
	b = append(b, byte(len(id)))
	return append(b, id...)
}
