//go:build !linux

package udpconn

import "net"

// LargeBuffers returns a tune for Listen that asks for size bytes of socket
// buffer each way, as far as the system allows.
func LargeBuffers(size int) func(*net.UDPConn) {
	return func(uc *net.UDPConn) {
		uc.SetReadBuffer(size)
		uc.SetWriteBuffer(size)
	}
}
