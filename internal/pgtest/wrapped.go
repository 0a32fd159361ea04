package pgtest

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// OpenWrapped is [Env.Open] through a driver that wraps pgx's, as the
// drivers that instrument database/sql (otelsql, sqlhooks) do: each of
// its connections hands every call on to a pgx one, and is not one, so
// dbctx takes it for another driver than pgx's. It closes the pool when
// tb's test ends.
func (e *Env) OpenWrapped(tb testing.TB) *sql.DB {
	tb.Helper()
	return OpenWrappedDSN(tb, e.dsn)
}

// OpenWrappedDSN is [Env.OpenWrapped] to dsn (a [Proxy]'s, say).
func OpenWrappedDSN(tb testing.TB, dsn string) *sql.DB {
	tb.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	db := sql.OpenDB(wrapConnector{stdlib.GetConnector(*cfg)})
	tb.Cleanup(func() { db.Close() })
	return db
}

type wrapConnector struct{ driver.Connector }

func (w wrapConnector) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := w.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return wrapConn{c.(*stdlib.Conn)}, nil
}

// wrapConn has the methods of stdlib.Conn that database/sql looks for,
// and no other (not Conn, which would give the pgx connection away).
type wrapConn struct{ c *stdlib.Conn }

var (
	_ driver.ConnBeginTx        = wrapConn{}
	_ driver.ConnPrepareContext = wrapConn{}
	_ driver.ExecerContext      = wrapConn{}
	_ driver.QueryerContext     = wrapConn{}
	_ driver.Pinger             = wrapConn{}
	_ driver.NamedValueChecker  = wrapConn{}
	_ driver.SessionResetter    = wrapConn{}
)

func (w wrapConn) Prepare(query string) (driver.Stmt, error) { return w.c.Prepare(query) }
func (w wrapConn) Close() error                              { return w.c.Close() }
func (w wrapConn) Begin() (driver.Tx, error)                 { return w.c.Begin() }

func (w wrapConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	return w.c.BeginTx(ctx, opts)
}

func (w wrapConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	return w.c.PrepareContext(ctx, query)
}

func (w wrapConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	return w.c.ExecContext(ctx, query, args)
}

func (w wrapConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	return w.c.QueryContext(ctx, query, args)
}

func (w wrapConn) Ping(ctx context.Context) error             { return w.c.Ping(ctx) }
func (w wrapConn) CheckNamedValue(v *driver.NamedValue) error { return w.c.CheckNamedValue(v) }
func (w wrapConn) ResetSession(ctx context.Context) error     { return w.c.ResetSession(ctx) }
