package pgtest

import (
	"net"
	"testing"

	"github.com/dbscope/dbscope/internal/pgserver"
)

// Connection strings that cannot connect, for tests of what a client
// makes of it: each is [Env.DSN] with one thing wrong.

// MissingDatabase returns [Env.DSN] naming a database that does not
// exist (SQLSTATE 3D000 at connect).
func (e *Env) MissingDatabase(tb testing.TB) string {
	tb.Helper()
	return must(tb)(pgserver.WithParams(e.dsn, "dbname", e.schema+"_missing"))
}

// MissingRole returns [Env.DSN] logging in as a role that does not exist
// (SQLSTATE 28000 at connect).
func (e *Env) MissingRole(tb testing.TB) string {
	tb.Helper()
	return must(tb)(pgserver.WithUser(e.dsn, e.schema+"_missing", "x"))
}

// UnknownHost returns [Env.DSN] naming a host that does not resolve
// (.invalid: RFC 6761).
func (e *Env) UnknownHost(tb testing.TB) string {
	tb.Helper()
	return must(tb)(pgserver.WithTCPAddr(e.dsn, "db.invalid:5432"))
}

// Refused returns [Env.DSN] pointed at a loopback port where nothing
// listens: connecting is refused, as with a server that is down.
func (e *Env) Refused(tb testing.TB) string {
	tb.Helper()
	return must(tb)(pgserver.WithTCPAddr(e.dsn, ClosedAddr(tb)))
}

// ClosedAddr returns a loopback address where nothing listens (it did a
// moment ago).
func ClosedAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

func must(tb testing.TB) func(string, error) string {
	return func(s string, err error) string {
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
}
