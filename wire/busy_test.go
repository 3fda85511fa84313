package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

var testCookie = [CookieLen]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}

func TestBusyGolden(t *testing.T) {
	got := hex.EncodeToString(AppendBusy(nil, testCookie))
	const want = "67636eb0" + "0102030405060708090a0b0c0d0e0f10"
	if got != want {
		t.Fatalf("Busy = %s, want %s", got, want)
	}
	ck, err := ParseBusy(AppendBusy([]byte("prefix"), testCookie)[len("prefix"):])
	if err != nil || ck != testCookie {
		t.Fatalf("round trip: %x, %v", ck, err)
	}
}

func TestCookiedGoldenAndRoundTrip(t *testing.T) {
	pub := PublicKey(fuzzPriv)
	sealed, err := Seal(nil, sampleMessages()[0], pub, &fuzzShared)
	if err != nil {
		t.Fatal(err)
	}
	b := AppendCookied([]byte("prefix"), testCookie, sealed)
	if got, want := hex.EncodeToString(b[:len("prefix")+CookiedOverhead]), hex.EncodeToString([]byte("prefix"))+"67636eb1"+"0102030405060708090a0b0c0d0e0f10"; got != want {
		t.Fatalf("Cookied head = %s, want %s", got, want)
	}
	ck, inner, err := ParseCookied(b[len("prefix"):])
	if err != nil || ck != testCookie || !bytes.Equal(inner, sealed) {
		t.Fatalf("round trip: %x, %v", ck, err)
	}
	if _, _, err := Open(inner, &fuzzShared); err != nil {
		t.Fatalf("the inner datagram does not open: %v", err)
	}
}

func TestBusyAndCookiedReject(t *testing.T) {
	busy := AppendBusy(nil, testCookie)
	for name, c := range map[string]struct {
		b    []byte
		want error
	}{
		"busy truncated":  {busy[:BusyLen-1], ErrShort},
		"busy trailing":   {append(busy[:BusyLen:BusyLen], 0), ErrTrailing},
		"busy other kind": {[]byte("gcn\x01" + string(testCookie[:])), ErrNotGCN},
	} {
		if _, err := ParseBusy(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	pub := PublicKey(fuzzPriv)
	sealed, _ := Seal(nil, sampleMessages()[0], pub, &fuzzShared)
	good := AppendCookied(nil, testCookie, sealed)
	bad := AppendCookied(nil, testCookie, sealed)
	bad[CookiedOverhead+3] = 9 // the inner envelope's version
	for name, c := range map[string]struct {
		b    []byte
		want error
	}{
		"cookied truncated":     {good[:CookiedOverhead-1], ErrShort},
		"cookied empty inside":  {good[:CookiedOverhead], ErrNotGCN},
		"cookied inner cut":     {good[:CookiedOverhead+HeaderLen], ErrShort},
		"cookied oversized":     {append(AppendCookied(nil, testCookie, nil), make([]byte, MaxDatagram)...), ErrTooLarge},
		"cookied inner version": {bad, ErrVersion},
		"cookied is busy":       {busy, ErrNotGCN},
	} {
		if _, _, err := ParseCookied(c.b); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

func FuzzParseCookied(f *testing.F) {
	pub := PublicKey(fuzzPriv)
	sealed, _ := Seal(nil, sampleMessages()[0], pub, &fuzzShared)
	f.Add(AppendCookied(nil, testCookie, sealed))
	f.Add(AppendBusy(nil, testCookie))
	f.Add([]byte("gcn\xb1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if ck, err := ParseBusy(b); err == nil && !bytes.Equal(AppendBusy(nil, ck), b) {
			t.Fatalf("Busy %x does not re-encode to itself", b)
		}
		ck, inner, err := ParseCookied(b)
		if err != nil {
			return
		}
		if len(b) > MaxDatagram || !bytes.Equal(AppendCookied(nil, ck, inner), b) {
			t.Fatalf("Cookied %x accepted but does not re-encode to itself", b)
		}
	})
}
