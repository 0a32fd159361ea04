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

// peek reads into buf without consuming and without blocking. The call
// cannot block (MSG_DONTWAIT), so it skips the scheduler's syscall
// bookkeeping; it runs once per connection pinned.
func peek(fd int, buf []byte) (int, error) {
	n, _, errno := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)),
		syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}
