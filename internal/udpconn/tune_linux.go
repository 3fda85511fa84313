package udpconn

import (
	"net"
	"syscall"
)

// LargeBuffers returns a tune for Listen that asks for size bytes of socket
// buffer each way (as root beyond the sysctl limits, with SO_RCVBUFFORCE;
// otherwise what they allow) and sets Don't Fragment on IPv4.
func LargeBuffers(size int) func(*net.UDPConn) {
	return func(uc *net.UDPConn) {
		uc.SetReadBuffer(size)
		uc.SetWriteBuffer(size)
		raw, err := uc.SyscallConn()
		if err != nil {
			return
		}
		v4 := false
		if local, _ := uc.LocalAddr().(*net.UDPAddr); local != nil && local.IP.To4() != nil {
			v4 = true
		}
		raw.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUFFORCE, size)
			syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUFFORCE, size)
			if v4 {
				// Don't Fragment on every datagram (ours are at most 1200 bytes,
				// below any real path MTU), without path-MTU errors. A datagram
				// that may be fragmented needs a fresh IP ID from a hash table
				// shared by all sockets: 3% of a 100k fan-out's CPU in a profile.
				// With DF the ID is simply zero (RFC 6864).
				syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_PROBE)
			}
		})
	}
}
