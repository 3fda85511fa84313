package udpconn

import (
	"net"
	"net/netip"
)

// Portable is a Conn over a *net.UDPConn: one system call per datagram,
// on any system Go runs on.
type Portable struct {
	uc    *net.UDPConn
	local netip.AddrPort
}

// NewPortable wraps uc.
func NewPortable(uc *net.UDPConn) *Portable {
	return &Portable{uc: uc, local: Unmap(uc.LocalAddr().(*net.UDPAddr).AddrPort())}
}

// ReadBatch implements Conn; it reads one datagram a call.
func (p *Portable) ReadBatch(pkts []Packet) (int, error) {
	if len(pkts) == 0 {
		return 0, nil
	}
	buf := pkts[0].Buf[:cap(pkts[0].Buf)]
	n, from, err := p.uc.ReadFromUDPAddrPort(buf)
	if err != nil {
		return 0, err
	}
	pkts[0].Buf, pkts[0].Addr = buf[:n], Unmap(from)
	return 1, nil
}

// WriteBatch implements Conn.
func (p *Portable) WriteBatch(pkts []Packet) error {
	var first error
	for _, pk := range pkts {
		if _, err := p.uc.WriteToUDPAddrPort(pk.Buf, pk.Addr); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// LocalAddrPort implements Conn.
func (p *Portable) LocalAddrPort() netip.AddrPort { return p.local }

// Close implements Conn.
func (p *Portable) Close() error { return p.uc.Close() }
