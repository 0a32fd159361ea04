package dbctx

import (
	"crypto/tls"
	"database/sql/driver"
	"net"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// check is the health check run on every connection a scope pins, before
// user code sees it. database/sql and pgx ping only after a second idle, so
// a backend killed between two requests would fail the next statement;
// instead check looks at the socket without a round trip: on an idle
// connection nothing should be waiting to be read, so data or EOF there
// means the server has closed the session (pg_terminate_backend, restart).
// It returns driver.ErrBadConn for a dead connection, which makes
// database/sql close it. pc is nil for drivers other than pgx's stdlib;
// sock is pc's (socketOf); now is monotonic().
//
// A connection a scope gave back less than p.recent ago is not looked at
// (looked is false): under load that is nearly every check-out, and the
// look, a system call, costs several percent of a message's CPU. A
// backend that died in that moment is caught by the statement retry
// instead (the server's 57P message, see retryable); raw access, which is
// not retried, looks first (Scope.raw). Once a dead connection has been
// seen, every connection given back before that is looked at again: a
// round of kills (a failover, pg_terminate_backend of every backend)
// costs one retry, not one per connection.
func (p *Pool) check(pc *pgconn.PgConn, sock *socket, now time.Duration) (looked bool, err error) {
	if pc == nil {
		// Another driver: database/sql's ResetSession and Validator, and
		// the statement retry, are what we have.
		return true, nil
	}
	if pc.IsClosed() || pc.TxStatus() != 'I' {
		return true, driver.ErrBadConn
	}
	if sock.released > time.Duration(p.deathSeen.Load()) && now-sock.released < p.recent {
		return false, nil
	}
	if sock.dead() {
		return true, driver.ErrBadConn
	}
	return true, nil
}

// recentlyReleased is Pool.recent: how long after a scope gave a
// connection back the next check-out skips the socket check. Idle
// connections that a proxy or the server may close are idle for far
// longer.
const recentlyReleased = 10 * time.Millisecond

// socket is what the health check knows of a connection's socket, kept in
// the connection's CustomData so it is looked up once per connection.
type socket struct {
	fd       int           // -1: cannot be looked into
	plain    bool          // no TLS: the first byte waiting is a message type
	released time.Duration // monotonic(): last given back by a scope; 0: never

	// The session user the server reported when the connection was first
	// seen (see changed).
	auth string

	px *pgx.Conn // the connection itself, for the Scope's pgx methods
}

// paramAuth is the session user, which the server reports to the client
// whenever it changes (GUC_REPORT): compared at every give-back, without
// a round trip, it catches a change of user the classifier did not see
// (a view that calls set_config('session_authorization', …)). Each
// parameter compared costs a map lookup per give-back, about 0.4% of the
// instructions of a one-query message, so only the one whose leak is a
// privilege escalation is compared.
const paramAuth = "session_authorization"

// changed reports whether pc's session runs as another user than when
// first seen.
func (s *socket) changed(pc *pgconn.PgConn) bool { return pc.ParameterStatus(paramAuth) != s.auth }

const socketKey = "github.com/dbscope/dbscope/dbctx.socket"

func socketOf(pc *pgconn.PgConn) *socket {
	data := pc.CustomData()
	if s, ok := data[socketKey].(*socket); ok {
		return s
	}
	s := &socket{
		fd:    -1,
		plain: true,
		auth:  pc.ParameterStatus(paramAuth),
	}
	nc := pc.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc, s.plain = tc.NetConn(), false
	}
	s.fd = fdOf(nc)
	if data != nil {
		data[socketKey] = s
	}
	return s
}

// fdOf returns the file descriptor under nc, or -1. The descriptor stays
// valid while pgx has not closed the connection, which check verifies
// before every use: pgx closes the socket only after marking itself closed.
func fdOf(nc net.Conn) int {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// socketOfDriver returns the pgx connection under a pinned connection and
// what is known of its socket, or nil for another driver.
func socketOfDriver(driverConn any) (*pgconn.PgConn, *socket) {
	c, ok := driverConn.(*stdlib.Conn)
	if !ok {
		return nil, nil
	}
	pc := c.Conn().PgConn()
	s := socketOf(pc)
	s.px = c.Conn()
	return pc, s
}
