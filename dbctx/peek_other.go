//go:build unix && !linux

package dbctx

import "syscall"

// peerClosed is conservative where TCP_INFO is not available: data waiting
// on an idle connection is taken as a sign it is dead.
func peerClosed(fd int) bool { return true }

// peek reads into buf without consuming and without blocking.
func peek(fd int, buf []byte) (int, error) {
	n, _, err := syscall.Recvfrom(fd, buf, syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return n, err
}
