package punch

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v2"
)

// isSTUN reports whether b looks like a STUN message: the first two bits
// are zero and the magic cookie sits at bytes 4..8 (RFC 5389 §6).
func isSTUN(b []byte) bool {
	return len(b) >= 20 && b[0]&0xc0 == 0 && binary.BigEndian.Uint32(b[4:8]) == magicCookie
}

// stunClient matches Binding responses read by the daemon's one socket to
// the requests that are waiting for them.
type stunClient struct {
	mu      sync.Mutex
	waiting map[[stun.TransactionIDSize]byte]chan netip.AddrPort
}

func newSTUNClient() *stunClient {
	return &stunClient{waiting: make(map[[stun.TransactionIDSize]byte]chan netip.AddrPort)}
}

// magicCookie is the fixed STUN cookie (RFC 5389 §6).
const magicCookie = 0x2112A442

// stunRetry is RFC 5389's initial retransmission timeout (RTO, 500 ms).
const stunRetry = 500 * time.Millisecond

// bind sends Binding requests to server, retransmitting, until a response
// arrives or ctx ends, and returns the reflexive address.
func (c *stunClient) bind(ctx context.Context, conn net.PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	ch := make(chan netip.AddrPort, 1)
	c.mu.Lock()
	c.waiting[req.TransactionID] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiting, req.TransactionID)
		c.mu.Unlock()
	}()
	t := time.NewTicker(stunRetry)
	defer t.Stop()
	for {
		if _, err := conn.WriteTo(req.Raw, net.UDPAddrFromAddrPort(server)); err != nil {
			return netip.AddrPort{}, err
		}
		select {
		case <-ctx.Done():
			return netip.AddrPort{}, errors.New("no STUN response")
		case a := <-ch:
			return a, nil
		case <-t.C:
		}
	}
}

// handle delivers a response to its waiting request; anything else is dropped.
func (c *stunClient) handle(b []byte) {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil || m.Type != stun.BindingSuccess {
		return
	}
	var xa stun.XORMappedAddress
	if xa.GetFrom(m) != nil {
		return
	}
	ip, ok := netip.AddrFromSlice(xa.IP)
	if !ok {
		return
	}
	c.mu.Lock()
	ch := c.waiting[m.TransactionID]
	c.mu.Unlock()
	if ch != nil {
		select {
		case ch <- netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port)):
		default:
		}
	}
}
