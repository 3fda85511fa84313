//go:build !linux

package udpconn

import "net"

func wrap(uc *net.UDPConn) (Conn, error) { return NewPortable(uc), nil }
