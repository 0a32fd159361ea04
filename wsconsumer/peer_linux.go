//go:build linux

package wsconsumer

import (
	"net"
	"syscall"
	"unsafe"
)

// peerGone reports whether the client of c has closed its side of the
// TCP connection or reset it, from TCP_INFO, whatever data it sent before
// still waits unread. For a connection that is not TCP it reports false.
func peerGone(c net.Conn) bool {
	for {
		u, ok := c.(interface{ NetConn() net.Conn }) // *tls.Conn
		if !ok {
			break
		}
		c = u.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var info syscall.TCPInfo
	errno := syscall.Errno(0)
	if raw.Control(func(fd uintptr) {
		size := uint32(syscall.SizeofTCPInfo)
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	}) != nil || errno != 0 {
		return false
	}
	const tcpClose, tcpCloseWait = 7, 8
	return info.State == tcpClose || info.State == tcpCloseWait
}
