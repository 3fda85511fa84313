package wire

import (
	"encoding/binary"
	"fmt"
)

// Gathered acks. In a tree, each member's ack of an event still comes from
// the member itself, sealed to the rendezvous with its own key, so no peer
// can make the rendezvous believe that another member got an event. But the
// member hands that sealed ack to its parent (RelayAck), and the parent
// passes its children's acks on together (Acks): the rendezvous reads one
// datagram per parent instead of one per member, and opens each ack inside
// as if it had come alone. A parent can drop or delay its children's acks,
// which costs them the tree deadline (the rendezvous then sends to them
// directly); it cannot alter or invent one.
//
// The rendezvous says first that it takes gathered acks (Gather, before its
// Fanout offer); a daemon that heard it says so in its PeerInfo
// (PeerFlagGather), and only an edge whose two ends both said so is marked
// EdgeGather. An old daemon or rendezvous never sees any of it.

// Message types of gathered acks.
const (
	TypeGather   Type = 0x18 // rendezvous → daemon: it takes gathered acks
	TypeRelayAck Type = 0x19 // child → parent: the child's own sealed Ack, to pass on
	TypeAcks     Type = 0x1a // parent → rendezvous: its children's sealed Acks
)

// Bounds of gathered acks.
const (
	// MaxSealedAck is the largest sealed Ack datagram: the envelope, the
	// type, the longest repository id and a sequence number.
	MaxSealedAck = Overhead + 1 + 1 + MaxRepoID + 8 // 186
	// minSealedAck is the smallest: a one-byte repository id.
	minSealedAck = Overhead + 1 + 1 + 1 + 8 // 87
	// MaxGathered bounds the acks one Acks message carries.
	MaxGathered = MaxFanout
)

// EdgeGather, on an Edge's role byte, marks an edge whose child hands its
// acks to its parent: on RoleParent, "send your acks through this peer"; on
// RoleChild, "this peer's acks come through you: pass them on".
const EdgeGather byte = 0x80

// PeerFlagGather, in PeerInfo, says that the daemon relays its acks through
// a parent and passes on its children's (only after the rendezvous's Gather).
const PeerFlagGather byte = 1 << 2

// Gather tells a daemon that this rendezvous takes gathered acks. It comes
// just before a Fanout; a daemon that does not know it drops it.
//
//	offset  size  field
//	0       1     type 0x18
type Gather struct{}

// AppendPlaintext implements Message.
func (m *Gather) AppendPlaintext(b []byte) []byte { return append(b, byte(TypeGather)) }

// RelayAck hands a child's ack to its parent, for the rendezvous.
//
//	offset  size  field
//	0       1     type 0x19
//	1       2     length n, 87..186
//	3       n     a whole datagram from the child to the rendezvous, whose
//	              sender key is the child's own (the parent checks that it is
//	              the sender of the RelayAck) and whose box holds an Ack
type RelayAck struct {
	Datagram []byte
}

// AppendPlaintext implements Message.
func (m *RelayAck) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeRelayAck))
	return appendSealedAck(b, m.Datagram)
}

// Sender is the key of the datagram's sender: the child whose ack it is.
func (m *RelayAck) Sender() Key {
	var k Key
	copy(k[:], m.Datagram[4:HeaderLen-NonceLen])
	return k
}

func parseRelayAck(r *reader) *RelayAck {
	return &RelayAck{Datagram: r.sealedAck()}
}

// Acks carries a parent's gathered acks of its children to the rendezvous,
// which opens each as it would have opened it alone.
//
//	offset  size  field
//	0       1     type 0x1a
//	1       1     number of acks N, 1..16
//	then N × (2 length n, 87..186; n bytes: a datagram as in RelayAck)
//
// A parent fills one Acks up to the 1124 bytes a plaintext may take (Fits)
// and starts another for the rest.
type Acks struct {
	Datagrams [][]byte
}

// AppendPlaintext implements Message.
func (m *Acks) AppendPlaintext(b []byte) []byte {
	b = append(b, byte(TypeAcks), byte(len(m.Datagrams)))
	for _, d := range m.Datagrams {
		b = appendSealedAck(b, d)
	}
	return b
}

// Fits reports whether one more datagram d fits this Acks.
func (m *Acks) Fits(d []byte) bool {
	size := 2
	for _, x := range m.Datagrams {
		size += 2 + len(x)
	}
	return len(m.Datagrams) < MaxGathered && size+2+len(d) <= MaxPlaintext
}

func parseAcks(r *reader) *Acks {
	n := int(r.u8())
	if r.err == nil && (n == 0 || n > MaxGathered) {
		r.fail(fmt.Errorf("%w: %d gathered acks", ErrField, n))
	}
	m := &Acks{}
	for i := 0; i < n && r.err == nil; i++ {
		m.Datagrams = append(m.Datagrams, r.sealedAck())
	}
	return m
}

func appendSealedAck(b, d []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(d)))
	return append(b, d...)
}

// sealedAck reads a length-prefixed datagram that may hold a sealed Ack:
// the length in range, and a well-formed envelope. It copies: the message
// outlives the buffer it was read from.
func (r *reader) sealedAck() []byte {
	n := int(r.u16())
	if r.err == nil && (n < minSealedAck || n > MaxSealedAck) {
		r.fail(fmt.Errorf("%w: a relayed ack of %d bytes", ErrField, n))
		return nil
	}
	d := r.take(n)
	if r.err != nil {
		return nil
	}
	if _, _, _, err := ParseHeader(d); err != nil {
		r.fail(fmt.Errorf("%w: a relayed ack: %v", ErrField, err))
		return nil
	}
	return append([]byte(nil), d...)
}
