//go:build linux

// Package tcpstate reads a TCP socket's state from the kernel (TCP_INFO),
// without a round trip and whatever data waits unread: whether the peer
// has closed its side or reset the connection.
package tcpstate

import (
	"syscall"
	"unsafe"
)

// The states Of reports that callers ask about (include/net/tcp_states.h).
const (
	Close     State = 7 // reset, or closed both ways
	CloseWait State = 8 // the peer has closed its side
)

// State is a TCP socket's state, as TCP_INFO's tcpi_state gives it.
type State uint8

// Of returns the state of TCP socket fd, and false where it cannot be
// read (not a TCP socket; not Linux).
func Of(fd uintptr) (State, bool) {
	var info syscall.TCPInfo
	size := uint32(syscall.SizeofTCPInfo)
	_, _, errno := syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.SOL_TCP, syscall.TCP_INFO,
		uintptr(unsafe.Pointer(&info)), uintptr(unsafe.Pointer(&size)), 0)
	if errno != 0 {
		return 0, false
	}
	return State(info.State), true
}
