package rendezvous

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/pion/stun/v2"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// RFC 5780 NAT behaviour discovery. With --alt-listen B:Q beside --listen
// A:P the rendezvous answers STUN on the whole grid A:P, A:Q, B:P, B:Q.
// Every answer carries RESPONSE-ORIGIN (the address it leaves from) and
// OTHER-ADDRESS (the diagonal: B:Q for A:P). A CHANGE-REQUEST is answered
// from the changed IP and/or port, and RESPONSE-PORT sends the answer to
// another port of the requester's IP (the mapping-lifetime test). With one
// address only plain Binding is served: a request asking for a change gets
// no answer, which a client reads as "could not test", never as "open".

// Grid holds the four sockets of RFC 5780 service, [ip][port]: index 0 is
// the primary address or port, 1 the alternate.
type Grid [2][2]udpconn.Conn

// CHANGE-REQUEST flags (RFC 5780 §7.2).
const (
	changeIP   = 0x04
	changePort = 0x02
)

func (g *Grid) full() bool {
	return g != nil && g[0][0] != nil && g[0][1] != nil && g[1][0] != nil && g[1][1] != nil
}

func (g *Grid) addr(ip, port int) netip.AddrPort {
	return g[ip][port].LocalAddrPort()
}

// stunAnswer builds the answer to a Binding request that arrived on grid
// cell (ip, port) from src, and says which cell sends it and to where. It
// returns a nil answer for anything it will not answer.
func stunAnswer(g *Grid, ip, port int, req []byte, src netip.AddrPort) (resp []byte, fromIP, fromPort int, to netip.AddrPort) {
	m := &stun.Message{Raw: append([]byte(nil), req...)}
	if err := m.Decode(); err != nil || m.Type != stun.BindingRequest {
		return nil, 0, 0, src
	}
	if m.Contains(stun.AttrFingerprint) && stun.Fingerprint.Check(m) != nil {
		return nil, 0, 0, src
	}
	fromIP, fromPort, to = ip, port, src
	rfc5780 := g.full()
	if v, err := m.Get(stun.AttrChangeRequest); err == nil {
		if len(v) != 4 || !rfc5780 {
			return nil, 0, 0, src
		}
		flags := binary.BigEndian.Uint32(v)
		if flags&changeIP != 0 {
			fromIP = 1 - ip
		}
		if flags&changePort != 0 {
			fromPort = 1 - port
		}
	}
	if v, err := m.Get(stun.AttrResponsePort); err == nil {
		if len(v) != 4 || !rfc5780 {
			return nil, 0, 0, src
		}
		p := binary.BigEndian.Uint16(v)
		if p == 0 {
			return nil, 0, 0, src
		}
		to = netip.AddrPortFrom(src.Addr(), p)
	}
	setters := []stun.Setter{
		stun.NewTransactionIDSetter(m.TransactionID),
		stun.BindingSuccess,
		&stun.XORMappedAddress{IP: net.IP(src.Addr().Unmap().AsSlice()), Port: int(src.Port())},
	}
	if rfc5780 {
		origin, other := g.addr(fromIP, fromPort), g.addr(1-ip, 1-port)
		setters = append(setters,
			&stun.ResponseOrigin{IP: net.IP(origin.Addr().AsSlice()), Port: int(origin.Port())},
			&stun.OtherAddress{IP: net.IP(other.Addr().AsSlice()), Port: int(other.Port())})
	}
	if m.Contains(stun.AttrFingerprint) {
		setters = append(setters, stun.Fingerprint)
	}
	out, err := stun.Build(setters...)
	if err != nil {
		return nil, 0, 0, src
	}
	return out.Raw, fromIP, fromPort, to
}
