//go:build unix

package dbctx

import "syscall"

// dead reads at most one byte from the socket without consuming it and
// without blocking (MSG_PEEK|MSG_DONTWAIT), as go-sql-driver/mysql's
// conncheck.go does. Nothing to read: alive. EOF or an error: dead. Data:
// on a plain connection an ErrorResponse ('E', the FATAL the server sends
// before it closes the session) means dead; any other message (a NOTIFY, a
// notice) is left for pgx to read unless the peer has already closed its
// side. TLS hides the message type, so there only a closed peer counts. A
// socket that cannot be looked into is reported alive: pgx's ping after a
// second idle and the statement retry cover it.
func (s *session) dead() bool {
	if s.fd < 0 {
		return false
	}
	var buf [1]byte
	n, err := peek(s.fd, buf[:])
	switch {
	case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
		return false
	case err != nil || n == 0:
		return true
	case s.plain && buf[0] == 'E':
		return true
	default:
		return peerClosed(s.fd)
	}
}
