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

// An Opener, which remembers repository ids and reuses its Ack across
// datagrams, decodes each of two plaintexts in a row exactly as
// ParsePlaintext does: the same error, or the same message.
func FuzzOpenerAgreesWithParse(f *testing.F) {
	samples := sampleMessages()
	for i, m := range samples {
		f.Add(m.AppendPlaintext(nil), samples[(i+1)%len(samples)].AppendPlaintext(nil))
	}
	pub := PublicKey(fuzzPriv)
	var nonce [NonceLen]byte
	f.Fuzz(func(t *testing.T, p1, p2 []byte) {
		var o Opener
		for _, p := range [][]byte{p1, p2, p1} {
			d, err := new(Sealer).sealWithNonce(nil, rawPlaintext(p), pub, &nonce, &fuzzShared)
			if err != nil {
				return // too large to seal
			}
			_, got, gotErr := o.Open(d, &fuzzShared)
			want, wantErr := ParsePlaintext(p)
			if (gotErr == nil) != (wantErr == nil) || gotErr != nil && gotErr.Error() != wantErr.Error() {
				t.Fatalf("the Opener says %v, ParsePlaintext %v", gotErr, wantErr)
			}
			if gotErr == nil && !bytes.Equal(got.AppendPlaintext(nil), want.AppendPlaintext(nil)) {
				t.Fatalf("the Opener decoded %#v, ParsePlaintext %#v", got, want)
			}
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
