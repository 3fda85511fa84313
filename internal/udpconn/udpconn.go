// Package udpconn is the one seam in front of the network: a UDP socket read and written in batches.
package udpconn

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Packet is one datagram and the address it came from or goes to.
type Packet struct {
	Buf  []byte
	Addr netip.AddrPort
}

// Conn is a UDP socket read and written in batches, like wireguard-go's
// conn.Bind. The real Linux socket (recvmmsg/sendmmsg), the portable
// fallback and netsim's in-memory network implement it, so the code that
// batches and coalesces in production is the code that tests run on fake
// time. Addresses are unmapped: an IPv4 peer is always a 4-byte address.
type Conn interface {
	// ReadBatch blocks until at least one datagram has arrived, then reads
	// as many as are ready, up to len(pkts): datagram i goes into
	// pkts[i].Buf[:cap(pkts[i].Buf)], which is then re-sliced to its length,
	// and its source into pkts[i].Addr. It returns how many it read. Only
	// one goroutine may read at a time.
	ReadBatch(pkts []Packet) (int, error)
	// WriteBatch sends every packet. A datagram the network refuses (an
	// unreachable destination, say) does not hold back the rest; the first
	// such error is returned. Any number of goroutines may write at once.
	WriteBatch(pkts []Packet) error
	// LocalAddrPort is the address the socket is bound to.
	LocalAddrPort() netip.AddrPort
	// Close ends every read, now and later, with net.ErrClosed, and closes
	// the socket.
	Close() error
}

// Listen opens a UDP socket at addr ("host:port"; "udp" network, so an
// unspecified IPv6 host is dual-stack) in the best form for this system.
// tune, if not nil, adjusts the socket before it is wrapped.
func Listen(addr string, tune func(*net.UDPConn)) (Conn, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, err
	}
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		pc.Close()
		return nil, errors.New("udpconn: not a UDP socket")
	}
	if tune != nil {
		tune(uc)
	}
	c, err := wrap(uc)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("udpconn: %w", err)
	}
	return c, nil
}

// WriteTo sends one datagram on c.
func WriteTo(c Conn, b []byte, to netip.AddrPort) error {
	return c.WriteBatch([]Packet{{Buf: b, Addr: to}})
}

// Unmap returns ap with an IPv4-mapped IPv6 address turned into IPv4.
func Unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
