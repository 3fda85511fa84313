package wire

import (
	"bytes"
	"testing"
)

// Fuzz keys are fixed so that the committed corpus holds datagrams that open.
var fuzzPriv = fixedKey(3)
var fuzzShared = SharedKey(PublicKey(fuzzPriv), fuzzPriv)

func FuzzParsePlaintext(f *testing.F) {
	for _, m := range sampleMessages() {
		f.Add(m.AppendPlaintext(nil))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		m, err := ParsePlaintext(p)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to something that decodes to the same.
		again, err := ParsePlaintext(m.AppendPlaintext(nil))
		if err != nil {
			t.Fatalf("re-encoded %T does not decode: %v", m, err)
		}
		if !bytes.Equal(again.AppendPlaintext(nil), m.AppendPlaintext(nil)) {
			t.Fatalf("%T is not stable across a round trip", m)
		}
	})
}

func FuzzOpen(f *testing.F) {
	pub := PublicKey(fuzzPriv)
	for _, m := range sampleMessages() {
		d, _ := Seal(nil, m, pub, &fuzzShared)
		f.Add(d)
	}
	f.Add([]byte("gcn"))
	f.Fuzz(func(t *testing.T, d []byte) {
		_, m, err := Open(d, &fuzzShared)
		if err == nil && len(d) > MaxDatagram {
			t.Fatalf("accepted a %d-byte datagram", len(d))
		}
		if err == nil && m == nil {
			t.Fatal("nil message without error")
		}
	})
}
