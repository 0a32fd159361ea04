package dbctx

import (
	"crypto/tls"
	"database/sql/driver"
	"net"
	"syscall"

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
// database/sql close it. pc is nil for drivers other than pgx's stdlib.
func (p *Pool) check(pc *pgconn.PgConn) error {
	if pc == nil {
		// Another driver: database/sql's ResetSession and Validator, and
		// the statement retry, are what we have.
		return nil
	}
	if pc.IsClosed() || pc.TxStatus() != 'I' {
		return driver.ErrBadConn
	}
	if socketOf(pc).dead() {
		return driver.ErrBadConn
	}
	return nil
}

// socket is what the health check knows of a connection's socket, kept in
// the connection's CustomData so it is looked up once per connection.
type socket struct {
	fd    int  // -1: cannot be looked into
	plain bool // no TLS: the first byte waiting is a message type
}

const socketKey = "github.com/dbscope/dbscope/dbctx.socket"

func socketOf(pc *pgconn.PgConn) *socket {
	data := pc.CustomData()
	if s, ok := data[socketKey].(*socket); ok {
		return s
	}
	s := &socket{fd: -1, plain: true}
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

// pgConnOf returns the pgx connection under a pinned connection, or nil for
// another driver.
func pgConnOf(driverConn any) *pgconn.PgConn {
	if c, ok := driverConn.(*stdlib.Conn); ok {
		return c.Conn().PgConn()
	}
	return nil
}
