//go:build unix

package dbctx

import (
	"context"
	"syscall"
	"time"
)

// dead reads at most one byte from the socket without consuming it and
// without blocking (MSG_PEEK|MSG_DONTWAIT), as go-sql-driver/mysql's
// conncheck.go does. Nothing to read: alive. EOF or an error: dead. Data:
// on a plain connection an ErrorResponse ('E', the FATAL the server sends
// before it closes the session) means dead; any other message (a NOTIFY, a
// notice) is left for pgx to read unless the peer has already closed its
// side. TLS hides the message type: there, unless the peer has closed its
// side, pgconn reads what came, for a millisecond at most (a FATAL closes
// the connection; a notice or a notification goes where pgconn sends
// those), since the FATAL of a backend terminated while idle comes a few
// milliseconds before its close. A socket that cannot be looked into is
// reported alive: pgx's ping after a second idle and the statement retry
// cover it.
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
	case s.plain:
		return peerClosed(s.fd)
	default:
		return peerClosed(s.fd) || s.readPending()
	}
}

// readPending has pgconn read what the server sent an idle connection
// over TLS, and reports whether that closed it (a FATAL).
func (s *session) readPending() bool {
	if s.pc == nil || s.shared() || s.pc.IsBusy() {
		return false // another goroutine may be using it
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	s.pc.ReceiveMessage(ctx) // a timeout leaves the connection as it was
	return s.pc.IsClosed()
}
