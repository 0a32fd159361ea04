//go:build linux

package dbctx

import (
	"syscall"
	"unsafe"
)

// peerClosed reports whether the peer of TCP socket fd has closed its side
// (state CLOSE_WAIT), read from TCP_INFO without a round trip. For other
// sockets it reports false.
func peerClosed(fd int) bool {
	var info syscall.TCPInfo
	size := uint32(syscall.SizeofTCPInfo)
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, uintptr(fd), syscall.SOL_TCP, syscall.TCP_INFO,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return false
	}
	const tcpCloseWait = 8
	return info.State == tcpCloseWait
}
