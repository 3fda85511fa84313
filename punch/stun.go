package punch

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"

	"github.com/pion/stun/v2"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// stunClient matches STUN responses read from a socket to the requests
// waiting for them. The daemon's one socket and every socket of a probe use
// it. With trackRequests it also remembers the transaction IDs of Binding
// requests that arrive (the probe's hairpinning test).
type stunClient struct {
	mu      sync.Mutex
	waiting map[[stun.TransactionIDSize]byte]chan *stun.Message
	seen    map[[stun.TransactionIDSize]byte]bool // nil unless tracking requests
}

func newSTUNClient(trackRequests bool) *stunClient {
	c := &stunClient{waiting: make(map[[stun.TransactionIDSize]byte]chan *stun.Message)}
	if trackRequests {
		c.seen = make(map[[stun.TransactionIDSize]byte]bool)
	}
	return c
}

// stunRetry is RFC 5389's initial retransmission timeout (RTO, 500 ms).
const stunRetry = 500 * time.Millisecond

// expect registers a transaction; the channel receives its response.
// Call the returned function when done waiting.
func (c *stunClient) expect(id [stun.TransactionIDSize]byte) (<-chan *stun.Message, func()) {
	ch := make(chan *stun.Message, 1)
	c.mu.Lock()
	c.waiting[id] = ch
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}
}

// transact sends req to dst and retransmits, first after retry, the gap
// doubling up to maxRetry, until the response arrives (returned) or ctx
// ends (nil).
func (c *stunClient) transact(ctx context.Context, conn udpconn.Conn, dst netip.AddrPort, req *stun.Message, retry, maxRetry time.Duration) *stun.Message {
	ch, done := c.expect(req.TransactionID)
	defer done()
	for {
		if err := udpconn.WriteTo(conn, req.Raw, dst); err != nil {
			return nil
		}
		t := time.NewTimer(retry)
		select {
		case m := <-ch:
			t.Stop()
			return m
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		retry = min(2*retry, maxRetry)
	}
}

// bind asks server for this socket's reflexive address, retransmitting
// every stunRetry until an answer or the end of ctx.
func (c *stunClient) bind(ctx context.Context, conn udpconn.Conn, server netip.AddrPort) (netip.AddrPort, error) {
	req, err := stun.Build(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if err != nil {
		return netip.AddrPort{}, err
	}
	a := mapped(c.transact(ctx, conn, server, req, stunRetry, stunRetry))
	if !a.IsValid() {
		return a, errors.New("no STUN response")
	}
	return a, nil
}

// handle delivers a Binding success response to its waiting request and,
// when tracking, records a Binding request. It reports whether the
// datagram was an answer to a request of this client: anything else is
// someone else's STUN (ICE's, on the daemon's socket).
func (c *stunClient) handle(b []byte) bool {
	m := &stun.Message{Raw: append([]byte(nil), b...)}
	if m.Decode() != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if m.Type == stun.BindingRequest {
		if c.seen != nil {
			c.seen[m.TransactionID] = true
		}
		return false
	}
	ch := c.waiting[m.TransactionID]
	if ch == nil {
		return false
	}
	if m.Type == stun.BindingSuccess { // an error answer is no answer: it must not pass for an open filter
		select {
		case ch <- m:
		default:
		}
	}
	return true
}

// sawRequest reports whether a Binding request with this ID arrived.
func (c *stunClient) sawRequest(id [stun.TransactionIDSize]byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[id]
}

// mapped is a response's XOR-MAPPED-ADDRESS, or the zero address.
func mapped(m *stun.Message) netip.AddrPort {
	var xa stun.XORMappedAddress
	if m == nil || xa.GetFrom(m) != nil {
		return netip.AddrPort{}
	}
	ip, ok := netip.AddrFromSlice(xa.IP)
	if !ok {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(xa.Port))
}
