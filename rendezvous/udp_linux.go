package rendezvous

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// udpSocket is a UDP socket that the rendezvous reads with blocking
// recvmmsg on its own and writes with sendmmsg, outside Go's netpoller.
//
// Why: a socket in the netpoller is in an edge-triggered epoll set, so every
// arriving datagram, and every sent one when its buffer is freed, wakes the
// runtime's polling thread, even while the reader is deliberately pausing to
// batch its reads. With 100k clients keeping alive (4000 datagrams a
// second) a profile showed two context switches per keepalive, most of the
// rendezvous's CPU. A blocking reader that is not woken while it pauses
// costs one wakeup per batch instead.
type udpSocket struct {
	// mu is held for reading around every system call on fd, and for
	// writing to close it, so the descriptor is never reused under a call.
	mu     sync.RWMutex
	fd     int
	closed bool
	shut   atomic.Bool // reads were shut down: they return a timeout
	local  *net.UDPAddr
	v6     bool
}

// takeUDP moves a listening *net.UDPConn's socket out of the netpoller: it
// keeps a blocking duplicate of the descriptor and closes the original,
// which removes it from the runtime's epoll set.
func takeUDP(pc net.PacketConn) (*udpSocket, error) {
	uc, ok := pc.(*net.UDPConn)
	if !ok {
		return nil, errors.New("rendezvous: not a UDP socket")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(s uintptr) { fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if dupErr != nil {
		return nil, dupErr
	}
	local := uc.LocalAddr().(*net.UDPAddr)
	uc.Close()
	if err := unix.SetNonblock(fd, false); err != nil {
		unix.Close(fd)
		return nil, err
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &udpSocket{fd: fd, local: local, v6: domain == unix.AF_INET6}, nil
}

// errClosed is what calls on a closed socket return.
var errClosed = net.ErrClosed

func (u *udpSocket) LocalAddr() net.Addr { return u.local }

// Close shuts the socket down, which wakes a blocked reader, then closes it.
func (u *udpSocket) Close() error {
	u.shut.Store(true)
	unix.Shutdown(u.fd, unix.SHUT_RDWR) // ENOTCONN for unconnected UDP, yet it wakes readers
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return errClosed
	}
	u.closed = true
	return unix.Close(u.fd)
}

// SetReadDeadline supports only what the server uses: a time in the past
// ends every read, now and later, as a timeout.
func (u *udpSocket) SetReadDeadline(t time.Time) error {
	if t.IsZero() || t.After(time.Now()) {
		return errors.New("rendezvous: udpSocket supports only past read deadlines")
	}
	u.shut.Store(true)
	unix.Shutdown(u.fd, unix.SHUT_RD)
	return nil
}

func (u *udpSocket) SetDeadline(t time.Time) error { return u.SetReadDeadline(t) }
func (u *udpSocket) SetWriteDeadline(t time.Time) error {
	return errors.New("rendezvous: no write deadlines")
}

// ReadFrom reads one datagram.
func (u *udpSocket) ReadFrom(b []byte) (int, net.Addr, error) {
	if len(b) == 0 {
		return 0, nil, errors.New("rendezvous: empty read buffer")
	}
	var rb recvBatch
	rb.init(1, 0)
	rb.bufs[0] = b
	n, err := u.readBatch(&rb)
	if err != nil || n == 0 {
		return 0, nil, err
	}
	return rb.lens[0], net.UDPAddrFromAddrPort(rb.srcs[0]), nil
}

// WriteTo sends one datagram.
func (u *udpSocket) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok {
		return 0, errors.New("rendezvous: not a UDP address")
	}
	var sb sendBatch
	sb.init(1)
	sb.add(b, ua.AddrPort(), u.v6)
	if err := u.writeBatch(&sb); err != nil {
		return 0, err
	}
	return len(b), nil
}

// recvBatch is a reusable recvmmsg request.
type recvBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrAny
	bufs  [][]byte
	lens  []int            // datagram sizes, after a read
	srcs  []netip.AddrPort // their sources
}

// init sizes the batch; bufSize > 0 allocates each buffer.
func (r *recvBatch) init(n, bufSize int) {
	r.hdrs = make([]unix.Mmsghdr, n)
	r.iovs = make([]unix.Iovec, n)
	r.names = make([]unix.RawSockaddrAny, n)
	r.bufs = make([][]byte, n)
	r.lens = make([]int, n)
	r.srcs = make([]netip.AddrPort, n)
	if bufSize > 0 {
		for i := range r.bufs {
			r.bufs[i] = make([]byte, bufSize)
		}
	}
}

// readBatch blocks until at least one datagram is there and returns how
// many it read (MSG_WAITFORONE: it never waits for a full batch).
func (u *udpSocket) readBatch(r *recvBatch) (int, error) {
	for i := range r.hdrs {
		r.iovs[i].Base = &r.bufs[i][0]
		r.iovs[i].SetLen(len(r.bufs[i]))
		h := &r.hdrs[i].Hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Namelen = unix.SizeofSockaddrAny
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		h.Control, h.Controllen, h.Flags = nil, 0, 0
	}
	for {
		if u.shut.Load() {
			return 0, os.ErrDeadlineExceeded
		}
		u.mu.RLock()
		if u.closed {
			u.mu.RUnlock()
			return 0, errClosed
		}
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(u.fd), uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(len(r.hdrs)), unix.MSG_WAITFORONE, 0, 0)
		u.mu.RUnlock()
		if u.shut.Load() {
			return 0, os.ErrDeadlineExceeded
		}
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		k := 0
		for i := 0; i < int(n); i++ {
			src, ok := sockaddrToAddrPort(&r.names[i], r.hdrs[i].Hdr.Namelen)
			if !ok || r.hdrs[i].Hdr.Flags&unix.MSG_TRUNC != 0 {
				continue // no source, or larger than any datagram of ours
			}
			// Compact: datagram k takes slot i's buffer.
			r.bufs[k], r.bufs[i] = r.bufs[i], r.bufs[k]
			r.lens[k], r.srcs[k] = int(r.hdrs[i].Len), src
			k++
		}
		return k, nil
	}
}

func sockaddrToAddrPort(sa *unix.RawSockaddrAny, n uint32) (netip.AddrPort, bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		if n < unix.SizeofSockaddrInet4 {
			return netip.AddrPort{}, false
		}
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(p.Addr), port), true
	case unix.AF_INET6:
		if n < unix.SizeofSockaddrInet6 {
			return netip.AddrPort{}, false
		}
		p := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(p.Addr).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}

// sendBatch is a reusable sendmmsg request.
type sendBatch struct {
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	n     int
}

func (s *sendBatch) init(n int) {
	s.hdrs = make([]unix.Mmsghdr, n)
	s.iovs = make([]unix.Iovec, n)
	s.names = make([]unix.RawSockaddrInet6, n)
	s.n = 0
}

func (s *sendBatch) full() bool { return s.n == len(s.hdrs) }

// add queues one datagram; v6 says the socket is IPv6, where an IPv4
// destination is written as a v4-mapped address.
func (s *sendBatch) add(b []byte, to netip.AddrPort, v6 bool) {
	i := s.n
	s.n++
	name := &s.names[i]
	*name = unix.RawSockaddrInet6{}
	var namelen uint32
	if a := to.Addr(); a.Is4() && !v6 {
		p := (*unix.RawSockaddrInet4)(unsafe.Pointer(name))
		p.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&p.Port))[:], to.Port())
		p.Addr = a.As4()
		namelen = unix.SizeofSockaddrInet4
	} else {
		name.Family = unix.AF_INET6
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&name.Port))[:], to.Port())
		name.Addr = a.As16()
		namelen = unix.SizeofSockaddrInet6
	}
	if len(b) > 0 {
		s.iovs[i].Base = &b[0]
	} else {
		s.iovs[i].Base = nil
	}
	s.iovs[i].SetLen(len(b))
	h := &s.hdrs[i].Hdr
	h.Name = (*byte)(unsafe.Pointer(name))
	h.Namelen = namelen
	h.Iov = &s.iovs[i]
	h.SetIovlen(1)
	h.Control, h.Controllen, h.Flags = nil, 0, 0
}

// writeBatch sends everything queued and empties the batch. A datagram the
// kernel refuses (an unreachable destination, say) is skipped, not allowed
// to hold back the rest; the first such error is returned.
func (u *udpSocket) writeBatch(s *sendBatch) error {
	var first error
	for sent := 0; sent < s.n; {
		u.mu.RLock()
		if u.closed {
			u.mu.RUnlock()
			s.n = 0
			return errClosed
		}
		k, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(u.fd), uintptr(unsafe.Pointer(&s.hdrs[sent])), uintptr(s.n-sent), 0, 0, 0)
		u.mu.RUnlock()
		switch {
		case errno == unix.EINTR:
		case errno != 0:
			if first == nil {
				first = errno
			}
			if errno == unix.EPIPE || errno == unix.EBADF {
				s.n = 0
				return first // shut down
			}
			sent++ // skip the datagram that failed
		default:
			sent += int(k)
		}
	}
	s.n = 0
	return first
}
