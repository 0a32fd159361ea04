//go:build linux

package dbctx

import (
	"syscall"
	"unsafe"

	"github.com/dbscope/dbscope/internal/tcpstate"
)

// peerClosed reports whether the peer of TCP socket fd has closed its side
// (state CLOSE_WAIT), read from TCP_INFO without a round trip. For other
// sockets it reports false.
func peerClosed(fd int) bool {
	st, ok := tcpstate.Of(uintptr(fd))
	return ok && st == tcpstate.CloseWait
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
