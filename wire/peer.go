package wire

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Peer-to-peer fan-out. The rendezvous arranges the followers of a
// repository in a tree and signs each event once; every hop seals the signed
// event to the next peer with box. A daemon accepts a forwarded event only
// with a valid server signature, for a repository it follows, from the peer
// the rendezvous made its parent. Each daemon still acks the rendezvous
// itself, so no peer can make the rendezvous believe another got an event.

// Limits of the fan-out messages.
const (
	SigLen        = ed25519.SignatureSize // 64
	MaxCandidates = 8                     // candidates of one peer in an Edge
	MaxHostCands  = 4                     // host candidates a daemon reports
	MaxFanout     = 16                    // the largest tree arity
)

// Forward carries one server-signed event: from the rendezvous to a tree
// member, or from a parent to its child.
//
//	offset  size  field
//	0       1     type 0x08
//	1       8     sequence number in the repository's log (1, 2, ...)
//	9       8     time of the push, Unix milliseconds (signed)
//	17      1     repository id length L, 1..100
//	18      L     repository id
//	..      2     ref length R, 6..1000
//	..      R     ref
//	..      1     object id length H: 20 (SHA-1) or 32 (SHA-256)
//	..      H     old object id
//	..      H     new object id
//	..      64    Ed25519 signature by the server's signing key over
//	              "gcn-punch event v1\x00" followed by bytes 1.. up to here
//
// Unlike Notify it names no recipient: one signature serves every hop, and
// the box of each hop says who sent it to whom.
//
// Type 0x16 adds the chat message, signed with the event, for trees whose
// every member said (Subscribe) that it reads it:
//
//	offset  size  field
//	0       1     type 0x16
//	1       ...   as type 0x08, up to the new object id
//	..      4     commits the push added (0: unknown, or none)
//	..      1+A   author, as in Notify type 0x14
//	..      1+S   subject, as in Notify type 0x14
//	..      64    Ed25519 signature over "gcn-punch event+message v1\x00"
//	              followed by bytes 1.. up to here
type Forward struct {
	Seq       uint64
	TimeMilli int64
	RepoID    string
	Ref       string
	Old, New  string // lowercase hex object ids, 40 or 64 characters
	// WithMessage selects type 0x16, which carries (and signs) Chat.
	WithMessage bool
	Chat
	Sig [SigLen]byte
}

// TypeForwardMsg is a Forward with its chat message.
const TypeForwardMsg Type = 0x16

// signContext separates the signature of an event from any other use of
// the server's signing key, and an event with a message from one without.
const (
	signContext    = "gcn-punch event v1\x00"
	signContextMsg = "gcn-punch event+message v1\x00"
)

// appendBody appends the signed part of the message (without the type).
func (m *Forward) appendBody(b []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, m.Seq)
	b = binary.BigEndian.AppendUint64(b, uint64(m.TimeMilli))
	b = appendRepoID(b, m.RepoID)
	b = binary.BigEndian.AppendUint16(b, uint16(len(m.Ref)))
	b = append(b, m.Ref...)
	b = appendOIDs(b, m.Old, m.New)
	if m.WithMessage {
		b = m.Chat.append(b)
	}
	return b
}

// AppendSigned appends the bytes the signature covers.
func (m *Forward) AppendSigned(b []byte) []byte {
	if m.WithMessage {
		return m.appendBody(append(b, signContextMsg...))
	}
	return m.appendBody(append(b, signContext...))
}

// FitMessage shortens the message so that the Forward fits one datagram.
func (m *Forward) FitMessage() {
	if m.WithMessage {
		m.Chat.fit(len(m.AppendPlaintext(nil)) - MaxPlaintext)
	}
}

// Sign sets the signature. Validate the message first.
func (m *Forward) Sign(priv ed25519.PrivateKey) {
	copy(m.Sig[:], ed25519.Sign(priv, m.AppendSigned(nil)))
}

// Verify reports whether the signature is the server's.
func (m *Forward) Verify(pub ed25519.PublicKey) bool {
	return len(pub) == ed25519.PublicKeySize && ed25519.Verify(pub, m.AppendSigned(nil), m.Sig[:])
}

// AppendPlaintext implements Message. Validate first: it encodes what it is given.
func (m *Forward) AppendPlaintext(b []byte) []byte {
	t := TypeForward
	if m.WithMessage {
		t = TypeForwardMsg
	}
	b = append(b, byte(t))
	b = m.appendBody(b)
	return append(b, m.Sig[:]...)
}

// Validate checks that the event can be encoded and fits one datagram.
func (m *Forward) Validate() error {
	n := Notify{Seq: m.Seq, RepoID: m.RepoID, Ref: m.Ref, Old: m.Old, New: m.New}
	if err := n.validFields(); err != nil {
		return err
	}
	if n := len(m.AppendPlaintext(nil)); n > MaxPlaintext {
		return fmt.Errorf("%w: forward plaintext is %d bytes, at most %d fit", ErrMessageLarge, n, MaxPlaintext)
	}
	return nil
}

func parseForward(r *reader, withMessage bool) *Forward {
	m := &Forward{Seq: r.u64(), TimeMilli: int64(r.u64()), WithMessage: withMessage}
	m.RepoID = r.repoID()
	m.Ref, m.Old, m.New = r.refAndOIDs()
	if withMessage {
		r.chat(&m.Chat)
	}
	copy(m.Sig[:], r.take(SigLen))
	if r.err == nil && m.Seq == 0 {
		r.fail(fmt.Errorf("%w: sequence number 0", ErrField))
	}
	return m
}

// Fanout tells a daemon that this rendezvous builds fan-out trees, and the
// key that signs its events. A daemon that takes part answers with PeerInfo;
// one that does not understand it drops it and is served directly.
//
//	offset  size  field
//	0       1     type 0x09
//	1       32    the server's Ed25519 public key (signs Forward)
//	33      1     the trees' arity K, 1..16
type Fanout struct {
	SigningKey [ed25519.PublicKeySize]byte
	Arity      byte
}

// AppendPlaintext implements Message.
func (m *Fanout) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeFanout))
	b = append(b, m.SigningKey[:]...)
	return append(b, m.Arity)
}

func parseFanout(r *reader) *Fanout {
	m := &Fanout{}
	copy(m.SigningKey[:], r.take(ed25519.PublicKeySize))
	m.Arity = r.u8()
	if r.err == nil && (m.Arity == 0 || m.Arity > MaxFanout) {
		r.fail(fmt.Errorf("%w: arity %d", ErrField, m.Arity))
	}
	return m
}

// NAT behaviour codes (RFC 4787), as the daemon measured them.
const (
	BehaviourUnknown        byte = 0
	EndpointIndependent     byte = 1
	AddressDependent        byte = 2
	AddressAndPortDependent byte = 3
	maxBehaviour                 = AddressAndPortDependent
	PeerFlagParent          byte = 1 << 0 // the daemon may forward to children
	PeerFlagRejoin          byte = 1 << 1 // the daemon lost its edges and signing key (it restarted): send them again
	peerFlagsKnown               = PeerFlagParent | PeerFlagRejoin
)

// PeerInfo is a daemon's offer to take part in fan-out, for every
// repository it follows on this rendezvous.
//
//	offset  size  field
//	0       1     type 0x0a
//	1       1     flags: bit 0 = may be a parent (forward to children);
//	              bit 1 = rejoin: the daemon restarted, and holds neither its
//	              edges nor the signing key (the rendezvous answers with its
//	              Fanout and makes each of the daemon's edges again)
//	2       1     NAT mapping: 0 unknown, 1 endpoint-independent,
//	              2 address-dependent, 3 address-and-port-dependent
//	3       1     NAT filtering, the same codes
//	4       1     number of host candidates N, 0..4
//	then N × address: 1 length (4 or 16), the IP, 2 port
//
// The daemon's reflexive address is the one the rendezvous sees; it is not
// repeated here. The rendezvous answers only a rejoin, with a Fanout.
type PeerInfo struct {
	Flags              byte
	Mapping, Filtering byte
	Host               []netip.AddrPort
}

// AppendPlaintext implements Message.
func (m *PeerInfo) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypePeerInfo), m.Flags, m.Mapping, m.Filtering, byte(len(m.Host)))
	for _, a := range m.Host {
		b = appendAddrPort(b, a)
	}
	return b
}

func parsePeerInfo(r *reader) *PeerInfo {
	m := &PeerInfo{Flags: r.u8(), Mapping: r.u8(), Filtering: r.u8()}
	n := int(r.u8())
	if r.err == nil && (m.Flags&^peerFlagsKnown != 0 || m.Mapping > maxBehaviour || m.Filtering > maxBehaviour || n > MaxHostCands) {
		r.fail(fmt.Errorf("%w: peer info flags %#x, mapping %d, filtering %d, %d candidates", ErrField, m.Flags, m.Mapping, m.Filtering, n))
	}
	for i := 0; i < n && r.err == nil; i++ {
		m.Host = append(m.Host, r.candidateAddr())
	}
	return m
}

// Edge roles.
const (
	RoleParent byte = 1 // the peer is your parent: accept its Forwards
	RoleChild  byte = 2 // the peer is your child: forward to it
	RoleDrop   byte = 3 // the edge is gone
)

// Candidate kinds (ICE, RFC 8445).
const (
	CandHost  byte = 1
	CandSrflx byte = 2
	CandPrflx byte = 3
	CandRelay byte = 4
)

// CandidateKindName names a candidate kind as status output and logs do:
// host, srflx, prflx, relay ("" for none).
func CandidateKindName(k byte) string {
	switch k {
	case CandHost:
		return "host"
	case CandSrflx:
		return "srflx"
	case CandPrflx:
		return "prflx"
	case CandRelay:
		return "relay"
	}
	return ""
}

// PunchOK counts edges whose path formed, by the selected path's remote
// candidate kind: both ends keep it among their counters, with these JSON keys.
type PunchOK struct {
	PunchOKHost  uint64 `json:"punch_ok_host"`
	PunchOKSrflx uint64 `json:"punch_ok_srflx"`
	PunchOKPrflx uint64 `json:"punch_ok_prflx"`
	PunchOKRelay uint64 `json:"punch_ok_relay"`
}

// Count counts one formed path of kind k.
func (p *PunchOK) Count(k byte) {
	switch k {
	case CandHost:
		p.PunchOKHost++
	case CandSrflx:
		p.PunchOKSrflx++
	case CandPrflx:
		p.PunchOKPrflx++
	case CandRelay:
		p.PunchOKRelay++
	}
}

// Candidate is one address a peer may be reached at.
type Candidate struct {
	Kind byte
	Addr netip.AddrPort
}

// Edge tells both ends of a tree edge about each other at once, so that
// both start their connectivity checks together. The ICE credentials are the
// rendezvous's, made for this edge; a drop carries empty ones and no
// candidates.
//
//	offset  size  field
//	0       1     type 0x0b
//	1       8     edge id, nonzero
//	9       1     role: 1 the peer is your parent, 2 your child, 3 drop
//	10      1     repository id length L, 1..100
//	11      L     repository id
//	..      32    the peer's box public key
//	..      1+n   your ICE ufrag: length, then ice-chars (4..32)
//	..      1+n   your ICE password (22..64)
//	..      1+n   the peer's ICE ufrag
//	..      1+n   the peer's ICE password
//	..      1     number of the peer's candidates N, 0..8
//	then N × candidate: 1 kind (1 host, 2 srflx, 3 prflx, 4 relay),
//	        1 length (4 or 16), the IP, 2 port
type Edge struct {
	ID                     uint64
	Role                   byte
	RepoID                 string
	Peer                   Key
	LocalUfrag, LocalPwd   string
	RemoteUfrag, RemotePwd string
	Candidates             []Candidate
}

// AppendPlaintext implements Message.
func (m *Edge) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeEdge))
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = append(b, m.Role)
	b = appendRepoID(b, m.RepoID)
	b = append(b, m.Peer[:]...)
	for _, s := range []string{m.LocalUfrag, m.LocalPwd, m.RemoteUfrag, m.RemotePwd} {
		b = append(b, byte(len(s)))
		b = append(b, s...)
	}
	b = append(b, byte(len(m.Candidates)))
	for _, c := range m.Candidates {
		b = append(b, c.Kind)
		b = appendAddrPort(b, c.Addr)
	}
	return b
}

func parseEdge(r *reader) *Edge {
	m := &Edge{ID: r.u64(), Role: r.u8()}
	m.RepoID = r.repoID()
	m.Peer = r.key()
	creds := make([]string, 4)
	for i := range creds {
		creds[i] = string(r.take(int(r.u8())))
	}
	m.LocalUfrag, m.LocalPwd, m.RemoteUfrag, m.RemotePwd = creds[0], creds[1], creds[2], creds[3]
	n := int(r.u8())
	if r.err == nil {
		switch {
		case m.ID == 0 || m.Role < RoleParent || m.Role > RoleDrop:
			r.fail(fmt.Errorf("%w: edge id %d, role %d", ErrField, m.ID, m.Role))
		case n > MaxCandidates:
			r.fail(fmt.Errorf("%w: %d candidates", ErrField, n))
		case m.Role != RoleDrop && !(validICE(m.LocalUfrag, 4, 32) && validICE(m.RemoteUfrag, 4, 32) && validICE(m.LocalPwd, 22, 64) && validICE(m.RemotePwd, 22, 64)):
			r.fail(fmt.Errorf("%w: ICE credentials", ErrField))
		case m.Role == RoleDrop && (len(m.LocalUfrag)+len(m.LocalPwd)+len(m.RemoteUfrag)+len(m.RemotePwd) != 0 || n != 0):
			r.fail(fmt.Errorf("%w: a dropped edge carries no credentials or candidates", ErrField))
		}
	}
	for i := 0; i < n && r.err == nil; i++ {
		c := Candidate{Kind: r.u8()}
		c.Addr = r.candidateAddr()
		if r.err == nil && (c.Kind < CandHost || c.Kind > CandRelay) {
			r.fail(fmt.Errorf("%w: candidate kind %d", ErrField, c.Kind))
		}
		m.Candidates = append(m.Candidates, c)
	}
	return m
}

// validICE reports whether s is n ice-chars (ALPHA / DIGIT / "+" / "/",
// RFC 8445 §15.4) with lo <= n <= hi.
func validICE(s string, lo, hi int) bool {
	if len(s) < lo || len(s) > hi {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '/') {
			return false
		}
	}
	return true
}

// Edge states a daemon reports.
const (
	EdgeChecking  byte = 1 // the edge was taken and checks started
	EdgeConnected byte = 2 // a path was selected
	EdgeFailed    byte = 3 // no path formed: serve me another way
	EdgeDropped   byte = 4 // the drop was taken
)

// EdgeState reports how an edge fares, so that the rendezvous can move a
// client whose parent it cannot reach. The rendezvous never answers it.
//
//	offset  size  field
//	0       1     type 0x0c
//	1       8     edge id
//	9       1     state: 1 checking, 2 connected, 3 failed, 4 dropped
//	10      1     selected path's remote candidate kind (0 when none)
//	11      4     round-trip time in microseconds (0 when unknown)
type EdgeState struct {
	ID       uint64
	State    byte
	PathKind byte
	RTTMicro uint32
}

// AppendPlaintext implements Message.
func (m *EdgeState) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeEdgeState))
	b = binary.BigEndian.AppendUint64(b, m.ID)
	b = append(b, m.State, m.PathKind)
	return binary.BigEndian.AppendUint32(b, m.RTTMicro)
}

func parseEdgeState(r *reader) *EdgeState {
	m := &EdgeState{ID: r.u64(), State: r.u8(), PathKind: r.u8(), RTTMicro: r.u32()}
	if r.err == nil && (m.ID == 0 || m.State < EdgeChecking || m.State > EdgeDropped || m.PathKind > CandRelay) {
		r.fail(fmt.Errorf("%w: edge state %d, path kind %d", ErrField, m.State, m.PathKind))
	}
	return m
}

// candidateAddr reads an address with a nonzero port and an IP that is
// neither unspecified nor multicast.
func (r *reader) candidateAddr() netip.AddrPort {
	a := r.addrPort()
	if r.err == nil && (a.Port() == 0 || a.Addr().IsUnspecified() || a.Addr().IsMulticast()) {
		r.fail(fmt.Errorf("%w: candidate address %v", ErrField, a))
	}
	return a
}
