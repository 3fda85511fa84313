package wire

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

// Golden plaintexts of the gathered-ack messages, from their layout comments.
func TestGatherGolden(t *testing.T) {
	d := sampleSealedAck(5, 77)
	n := hex.EncodeToString(binary.BigEndian.AppendUint16(nil, uint16(len(d))))
	cases := []struct {
		m    Message
		want string
	}{
		{&Gather{}, "18"},
		{&RelayAck{Datagram: d}, "19" + n + hex.EncodeToString(d)},
		{&Acks{Datagrams: [][]byte{d, d}}, "1a" + "02" + n + hex.EncodeToString(d) + n + hex.EncodeToString(d)},
		{&Edge{ID: 1, Role: RoleChild, Gather: true, RepoID: "r", Peer: fixedKey(2), LocalUfrag: "abcd", LocalPwd: strings.Repeat("p", 22),
			RemoteUfrag: "efgh", RemotePwd: strings.Repeat("q", 22)},
			"0b" + "0000000000000001" + "82" + "0172" + strings.Repeat("02", 32) +
				"04" + hex.EncodeToString([]byte("abcd")) + "16" + strings.Repeat("70", 22) +
				"04" + hex.EncodeToString([]byte("efgh")) + "16" + strings.Repeat("71", 22) + "00"},
	}
	for _, c := range cases {
		got := hex.EncodeToString(c.m.AppendPlaintext(nil))
		if got != c.want {
			t.Errorf("%T:\n got %s\nwant %s", c.m, got, c.want)
		}
	}
	// The datagram itself is the Ack a client seals: 60 bytes of envelope,
	// then the box of "04 08 chat.git <seq>".
	if len(d) != Overhead+1+1+len("chat.git")+8 || !bytes.Equal(d[4:36], func() []byte { k := PublicKey(fixedKey(5)); return k[:] }()) {
		t.Fatalf("sealed ack: %d bytes, sender %x", len(d), d[4:36])
	}
}

// A relayed ack opens, at the rendezvous, to the child's own Ack; its
// sender is the child.
func TestRelayedAckOpensAsTheClients(t *testing.T) {
	d := sampleSealedAck(5, 77)
	m, err := ParsePlaintext((&RelayAck{Datagram: d}).AppendPlaintext(nil))
	if err != nil {
		t.Fatal(err)
	}
	ra := m.(*RelayAck)
	if ra.Sender() != PublicKey(fixedKey(5)) {
		t.Fatalf("sender %v", ra.Sender())
	}
	shared := SharedKey(PublicKey(fixedKey(5)), fixedKey(1)) // the rendezvous's side
	sender, inner, err := Open(ra.Datagram, &shared)
	if err != nil || sender != PublicKey(fixedKey(5)) {
		t.Fatal(sender, err)
	}
	if a, ok := inner.(*Ack); !ok || a.Seq != 77 || a.RepoID != "chat.git" {
		t.Fatalf("opened %#v", inner)
	}
	// The parsed datagram does not share the input's memory.
	in := (&RelayAck{Datagram: d}).AppendPlaintext(nil)
	m, _ = ParsePlaintext(in)
	in[10] ^= 0xff
	if !bytes.Equal(m.(*RelayAck).Datagram, d) {
		t.Fatal("the relayed datagram aliases the buffer it was read from")
	}
}

// Acks fills up to what one plaintext may carry, and at most MaxGathered.
func TestAcksFits(t *testing.T) {
	long := &Ack{RepoID: strings.Repeat("r", MaxRepoID), Seq: 1}
	shared := SharedKey(PublicKey(fixedKey(1)), fixedKey(5))
	d, err := Seal(nil, long, PublicKey(fixedKey(5)), &shared)
	if err != nil || len(d) != MaxSealedAck {
		t.Fatalf("%d bytes, %v", len(d), err)
	}
	var m Acks
	for m.Fits(d) {
		m.Datagrams = append(m.Datagrams, d)
	}
	if len(m.Datagrams) != 5 { // 2 + 5×188 = 942; a sixth makes 1130 > 1124
		t.Fatalf("%d of the largest acks fit", len(m.Datagrams))
	}
	if p := m.AppendPlaintext(nil); len(p) > MaxPlaintext {
		t.Fatalf("%d bytes", len(p))
	}
	small := sampleSealedAck(5, 1)
	m = Acks{}
	for m.Fits(small) {
		m.Datagrams = append(m.Datagrams, small)
	}
	// chat.git's ack is 94 bytes sealed: 2 + 11×96 = 1058, a twelfth is over.
	if want := min(MaxGathered, (MaxPlaintext-2)/(2+len(small))); len(m.Datagrams) != want || want != 11 {
		t.Fatalf("%d small acks fit, want %d", len(m.Datagrams), want)
	}
	if _, err := ParsePlaintext(m.AppendPlaintext(nil)); err != nil {
		t.Fatal(err)
	}
}

func TestGatherRejectsBadInput(t *testing.T) {
	d := sampleSealedAck(5, 77)
	notGCN := append([]byte("xyz"), d[3:]...)
	badVersion := append([]byte(nil), d...)
	badVersion[3] = 9
	bad := map[string][]byte{
		"no acks":         (&Acks{}).AppendPlaintext(nil),
		"17 acks":         (&Acks{Datagrams: make([][]byte, 17)}).AppendPlaintext(nil),
		"empty relay":     (&RelayAck{}).AppendPlaintext(nil),
		"short datagram":  (&RelayAck{Datagram: d[:minSealedAck-1]}).AppendPlaintext(nil),
		"long datagram":   (&RelayAck{Datagram: append(d, make([]byte, MaxSealedAck)...)}).AppendPlaintext(nil),
		"not gcn":         (&RelayAck{Datagram: notGCN}).AppendPlaintext(nil),
		"unknown version": (&RelayAck{Datagram: badVersion}).AppendPlaintext(nil),
		"truncated":       (&RelayAck{Datagram: d}).AppendPlaintext(nil)[:20],
		"trailing":        append((&RelayAck{Datagram: d}).AppendPlaintext(nil), 0),
		"truncated acks":  (&Acks{Datagrams: [][]byte{d, d}}).AppendPlaintext(nil)[:3+len(d)+5],
		"gather trailing": {byte(TypeGather), 0},
		"acks count over": append([]byte{byte(TypeAcks), 2}, (&RelayAck{Datagram: d}).AppendPlaintext(nil)[1:]...),
	}
	for name, p := range bad {
		if _, err := ParsePlaintext(p); err == nil {
			t.Errorf("%s: accepted", name)
		} else if !errors.Is(err, ErrField) && !errors.Is(err, ErrShort) && !errors.Is(err, ErrTrailing) {
			t.Errorf("%s: %v is none of the sentinels", name, err)
		}
	}
}
