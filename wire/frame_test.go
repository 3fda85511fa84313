package wire

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"testing"
)

func TestFrameGoldenAndRoundTrip(t *testing.T) {
	b, err := AppendFrame([]byte("prefix"), []byte("gcn\x01abc"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := hex.EncodeToString(b[len("prefix"):]), "0007"+"67636e01616263"; got != want {
		t.Fatalf("frame = %s, want %s", got, want)
	}
	two, _ := AppendFrame(b[len("prefix"):], []byte("x"))
	r := bytes.NewReader(two)
	buf := make([]byte, MaxDatagram)
	for _, want := range []string{"gcn\x01abc", "x"} {
		got, err := ReadFrame(r, buf)
		if err != nil || string(got) != want {
			t.Fatalf("ReadFrame = %q, %v; want %q", got, err, want)
		}
	}
	if _, err := ReadFrame(r, buf); err != io.EOF {
		t.Fatalf("at the end: %v, want io.EOF", err)
	}
}

func TestFrameRejects(t *testing.T) {
	if _, err := AppendFrame(nil, nil); !errors.Is(err, ErrFrameEmpty) {
		t.Errorf("empty: %v", err)
	}
	if _, err := AppendFrame(nil, make([]byte, MaxDatagram+1)); !errors.Is(err, ErrFrameLarge) {
		t.Errorf("oversized: %v", err)
	}
	buf := make([]byte, MaxDatagram)
	for name, c := range map[string]struct {
		in   []byte
		want error
	}{
		"half a header":      {[]byte{0}, ErrShort},
		"zero length":        {[]byte{0, 0}, ErrFrameEmpty},
		"longer than 1200":   {[]byte{0x04, 0xb1}, ErrFrameLarge},
		"cut inside":         {[]byte{0, 5, 'a', 'b'}, ErrShort},
		"header, no payload": {[]byte{0, 5}, ErrShort},
	} {
		if _, err := ReadFrame(bytes.NewReader(c.in), buf); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
}

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 3, 'g', 'c', 'n'})
	f.Add([]byte{0x04, 0xb0})
	f.Add([]byte{0, 0})
	f.Add([]byte{0, 9, 1})
	f.Fuzz(func(t *testing.T, in []byte) {
		buf := make([]byte, MaxDatagram)
		r := bytes.NewReader(in)
		for range 1000 {
			b, err := ReadFrame(r, buf)
			if err != nil {
				return
			}
			if len(b) == 0 || len(b) > MaxDatagram {
				t.Fatalf("a %d-byte frame accepted", len(b))
			}
			again, err := AppendFrame(nil, b)
			if err != nil || !bytes.Equal(again[FrameHeaderLen:], b) {
				t.Fatalf("frame does not re-encode: %v", err)
			}
		}
	})
}
