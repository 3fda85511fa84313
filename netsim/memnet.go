// Package netsim builds simulated networks for tests: in-memory packet networks and real Linux network-namespace NAT labs.
package netsim

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/gitchat/gcn-punch/internal/udpconn"
)

// MemNet is an in-memory datagram network with optional random loss. Its
// conns are udpconn.Conns that block on channels only, so the code that
// runs in production runs on them under testing/synctest, on fake time.
type MemNet struct {
	mu    sync.Mutex
	conns map[netip.AddrPort]*MemConn
	rng   *rand.Rand
	// LossPercent drops that share of datagrams, each independently.
	LossPercent int
	// Drop, when set, drops the datagrams it reports true for: a test's
	// targeted loss. Called with the network's lock held.
	Drop func(from, to netip.AddrPort, b []byte) bool
	// Delay, when set, holds each datagram back for what it returns: a
	// slow path. Called with the network's lock held.
	Delay     func(from, to netip.AddrPort, b []byte) time.Duration
	Dropped   int
	Delivered int
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
	c := &MemConn{net: n, addr: ap, in: make(chan datagram, memQueue), done: make(chan struct{})}
	n.conns[ap] = c
	return c, nil
}

// ListenDual attaches a dual-stack conn at an IPv4 and an IPv6 address,
// as a socket bound to [::] on a host with one of each: it sends to each
// family from its address in that family, and receives at both.
func (n *MemNet) ListenDual(addr4, addr6 string) (*MemConn, error) {
	c, err := n.Listen(addr4)
	if err != nil {
		return nil, err
	}
	ap6, err := netip.ParseAddrPort(addr6)
	if err != nil || !ap6.Addr().Is6() || !c.addr.Addr().Is4() {
		c.Close()
		return nil, fmt.Errorf("netsim: ListenDual wants an IPv4 and an IPv6 address, got %s and %s", addr4, addr6)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, taken := n.conns[ap6]; taken {
		return nil, errors.New("netsim: address in use")
	}
	c.addr6 = ap6
	n.conns[ap6] = c
	return c, nil
}

type datagram struct {
	from netip.AddrPort
	b    []byte
}

// MemConn is a udpconn.Conn on a MemNet.
type MemConn struct {
	net      *MemNet
	addr     netip.AddrPort
	addr6    netip.AddrPort // a dual-stack conn's IPv6 address (ListenDual)
	in       chan datagram
	done     chan struct{}
	closeOne sync.Once
	mu       sync.Mutex
	// lifetime, when set, makes the conn behave as if behind a NAT whose
	// mappings expire: a datagram from a peer gets through only if this
	// conn sent to that peer within the lifetime.
	lifetime time.Duration
	// lifetime6, when set, is the same for IPv6 peers (a firewall's idle
	// timeout, often not the NAT's); else lifetime holds for both.
	lifetime6 time.Duration
	sentTo    map[netip.AddrPort]time.Time
}

var _ udpconn.Conn = (*MemConn)(nil)

// SetMappingLifetime puts the conn behind a NAT whose idle mappings expire
// after d (0: never).
func (c *MemConn) SetMappingLifetime(d time.Duration) {
	c.mu.Lock()
	c.lifetime = d
	c.mu.Unlock()
}

// SetMappingLifetime6 gives IPv6 peers their own idle lifetime (0: never
// expire), as a home router's IPv6 firewall beside its IPv4 NAT.
func (c *MemConn) SetMappingLifetime6(d time.Duration) {
	c.mu.Lock()
	c.lifetime6 = d
	c.mu.Unlock()
}

// open reports whether a datagram from peer may reach c now.
func (c *MemConn) open(peer netip.AddrPort, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	lifetime := c.lifetime
	if peer.Addr().Is6() && c.addr6.IsValid() {
		lifetime = c.lifetime6
	}
	if lifetime == 0 {
		return true
	}
	last, ok := c.sentTo[peer]
	return ok && now.Sub(last) <= lifetime
}

// ReadBatch implements udpconn.Conn: it waits for one datagram, then takes
// those already queued behind it.
func (c *MemConn) ReadBatch(pkts []udpconn.Packet) (int, error) {
	if len(pkts) == 0 {
		return 0, nil
	}
	put := func(i int, d datagram) {
		buf := pkts[i].Buf[:cap(pkts[i].Buf)]
		pkts[i].Buf, pkts[i].Addr = buf[:copy(buf, d.b)], d.from
	}
	select {
	case d := <-c.in:
		put(0, d)
	case <-c.done:
		return 0, net.ErrClosed
	}
	n := 1
	for ; n < len(pkts); n++ {
		select {
		case d := <-c.in:
			put(n, d)
			continue
		default:
		}
		break
	}
	return n, nil
}

// WriteBatch implements udpconn.Conn. Loss and unknown destinations drop
// silently, as UDP does.
func (c *MemConn) WriteBatch(pkts []udpconn.Packet) error {
	for _, p := range pkts {
		if err := c.write(p.Buf, udpconn.Unmap(p.Addr)); err != nil {
			return err
		}
	}
	return nil
}

func (c *MemConn) write(b []byte, to netip.AddrPort) error {
	select {
	case <-c.done:
		return net.ErrClosed
	default:
	}
	now := time.Now()
	c.mu.Lock()
	if c.sentTo == nil {
		c.sentTo = make(map[netip.AddrPort]time.Time)
	}
	c.sentTo[to] = now
	c.mu.Unlock()
	from := c.addr
	if to.Addr().Is6() && c.addr6.IsValid() {
		from = c.addr6
	}
	n := c.net
	n.mu.Lock()
	dst := n.conns[to]
	lost := n.LossPercent > 0 && n.rng.IntN(100) < n.LossPercent || n.Drop != nil && n.Drop(from, to, b)
	if lost || dst == nil || !dst.open(from, now) {
		n.Dropped++
		n.mu.Unlock()
		return nil
	}
	n.Delivered++
	var delay time.Duration
	if n.Delay != nil {
		delay = n.Delay(from, to, b)
	}
	n.mu.Unlock()
	d := datagram{from: from, b: append([]byte(nil), b...)}
	deliver := func() {
		select {
		case dst.in <- d:
		case <-dst.done:
		default:
		}
	}
	if delay > 0 {
		time.AfterFunc(delay, deliver)
		return nil
	}
	deliver()
	return nil
}

// Close implements udpconn.Conn.
func (c *MemConn) Close() error {
	c.closeOne.Do(func() {
		close(c.done)
		c.net.mu.Lock()
		delete(c.net.conns, c.addr)
		if c.addr6.IsValid() {
			delete(c.net.conns, c.addr6)
		}
		c.net.mu.Unlock()
	})
	return nil
}

// LocalAddrPort implements udpconn.Conn.
func (c *MemConn) LocalAddrPort() netip.AddrPort { return c.addr }
