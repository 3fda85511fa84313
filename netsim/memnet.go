// Package netsim builds simulated networks for tests: in-memory packet networks and real Linux network-namespace NAT labs.
package netsim

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// MemNet is an in-memory datagram network with optional random loss. Its
// conns block on channels only, so code using them runs under
// testing/synctest on fake time.
type MemNet struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*MemConn
	rng   *rand.Rand
	// LossPercent drops that share of datagrams, each independently.
	LossPercent int
	Dropped     int
	Delivered   int
}

// NewMemNet makes a network whose loss pattern is fixed by seed.
func NewMemNet(seed uint64) *MemNet {
	return &MemNet{conns: make(map[netip.AddrPort]*MemConn), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

// memQueue is how many datagrams a conn buffers; past it, like a full
// socket buffer, datagrams are dropped.
const memQueue = 4096

// Listen attaches a conn at addr.
func (n *MemNet) Listen(addr string) (*MemConn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, taken := n.conns[ap]; taken {
		return nil, errors.New("netsim: address in use")
	}
	c := &MemConn{net: n, addr: ap, in: make(chan datagram, memQueue), done: make(chan struct{}), wake: make(chan struct{}, 1)}
	n.conns[ap] = c
	return c, nil
}

type datagram struct {
	from netip.AddrPort
	b    []byte
}

// MemConn is a net.PacketConn on a MemNet.
type MemConn struct {
	net      *MemNet
	addr     netip.AddrPort
	in       chan datagram
	done     chan struct{}
	closeOne sync.Once
	mu       sync.Mutex
	deadline time.Time
	wake     chan struct{}
	// lifetime, when set, makes the conn behave as if behind a NAT whose
	// mappings expire: a datagram from a peer gets through only if this
	// conn sent to that peer within the lifetime.
	lifetime time.Duration
	sentTo   map[netip.AddrPort]time.Time
}

// SetMappingLifetime puts the conn behind a NAT whose idle mappings expire
// after d (0: never).
func (c *MemConn) SetMappingLifetime(d time.Duration) {
	c.mu.Lock()
	c.lifetime = d
	c.mu.Unlock()
}

// open reports whether a datagram from peer may reach c now.
func (c *MemConn) open(peer netip.AddrPort, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lifetime == 0 {
		return true
	}
	last, ok := c.sentTo[peer]
	return ok && now.Sub(last) <= c.lifetime
}

// ReadFrom implements net.PacketConn.
func (c *MemConn) ReadFrom(b []byte) (int, net.Addr, error) {
	for {
		c.mu.Lock()
		dl := c.deadline
		c.mu.Unlock()
		var timeout <-chan time.Time
		if !dl.IsZero() {
			d := time.Until(dl)
			if d <= 0 {
				return 0, nil, os.ErrDeadlineExceeded
			}
			t := time.NewTimer(d)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case d := <-c.in:
			return copy(b, d.b), net.UDPAddrFromAddrPort(d.from), nil
		case <-c.done:
			return 0, nil, net.ErrClosed
		case <-timeout:
			return 0, nil, os.ErrDeadlineExceeded
		case <-c.wake:
			// the deadline changed: look again
		}
	}
}

// WriteTo implements net.PacketConn. Loss and unknown destinations drop
// silently, as UDP does.
func (c *MemConn) WriteTo(b []byte, to net.Addr) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
	}
	ap, err := netip.ParseAddrPort(to.String())
	if err != nil {
		return 0, err
	}
	ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	now := time.Now()
	c.mu.Lock()
	if c.sentTo == nil {
		c.sentTo = make(map[netip.AddrPort]time.Time)
	}
	c.sentTo[ap] = now
	c.mu.Unlock()
	n := c.net
	n.mu.Lock()
	dst := n.conns[ap]
	lost := n.LossPercent > 0 && n.rng.IntN(100) < n.LossPercent
	if lost || dst == nil || !dst.open(c.addr, now) {
		n.Dropped++
		n.mu.Unlock()
		return len(b), nil
	}
	n.Delivered++
	n.mu.Unlock()
	select {
	case dst.in <- datagram{from: c.addr, b: append([]byte(nil), b...)}:
	default:
	}
	return len(b), nil
}

// Close implements net.PacketConn.
func (c *MemConn) Close() error {
	c.closeOne.Do(func() {
		close(c.done)
		c.net.mu.Lock()
		delete(c.net.conns, c.addr)
		c.net.mu.Unlock()
	})
	return nil
}

// LocalAddr implements net.PacketConn.
func (c *MemConn) LocalAddr() net.Addr { return net.UDPAddrFromAddrPort(c.addr) }

// SetDeadline implements net.PacketConn (reads only; writes never block).
func (c *MemConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline implements net.PacketConn.
func (c *MemConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	c.deadline = t
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
	return nil
}

// SetWriteDeadline implements net.PacketConn; writes never block.
func (c *MemConn) SetWriteDeadline(time.Time) error { return nil }
