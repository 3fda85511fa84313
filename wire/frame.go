package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Stream framing. Where UDP is blocked, a daemon reaches the rendezvous
// over the SSH session that git already uses (`gcn-heartbeat watch`): the
// stream carries, both ways, the same datagrams as UDP, each in a frame.
//
//	offset  size  field
//	0       2     length n, big-endian, 1..1200
//	2       n     one datagram, exactly as it would travel over UDP
//
// Before the first frame, the rendezvous's side writes one line: "ok\n",
// or "error <reason>\n" and closes.

// FrameHeaderLen is the size of a frame's length field.
const FrameHeaderLen = 2

// Errors of the stream framing.
var (
	ErrFrameEmpty = errors.New("wire: empty frame")
	ErrFrameLarge = fmt.Errorf("wire: frame longer than %d bytes", MaxDatagram)
)

// AppendFrame appends datagram b, framed, onto dst.
func AppendFrame(dst, b []byte) ([]byte, error) {
	switch {
	case len(b) == 0:
		return dst, ErrFrameEmpty
	case len(b) > MaxDatagram:
		return dst, ErrFrameLarge
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(b)))
	return append(dst, b...), nil
}

// ReadFrame reads one frame from r into buf (which needs MaxDatagram
// bytes) and returns the datagram. io.EOF means the stream ended between
// frames; a stream that ends inside one is ErrShort.
func ReadFrame(r io.Reader, buf []byte) ([]byte, error) {
	var h [FrameHeaderLen]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrShort
		}
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	switch {
	case n == 0:
		return nil, ErrFrameEmpty
	case n > MaxDatagram || n > len(buf):
		return nil, ErrFrameLarge
	}
	if _, err := io.ReadFull(r, buf[:n]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, ErrShort
		}
		return nil, err
	}
	return buf[:n], nil
}
