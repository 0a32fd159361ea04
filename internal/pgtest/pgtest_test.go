package pgtest_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/dbscope/dbscope/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// eventually polls cond until it is true or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestSchemaIsolation(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	a, b := pgtest.New(t), pgtest.New(t)
	if a.Schema() == b.Schema() || a.AppName() == b.AppName() {
		t.Fatalf("two Envs share a name: %q/%q, %q/%q", a.Schema(), b.Schema(), a.AppName(), b.AppName())
	}
	dbA, dbB := a.Open(t), b.Open(t)
	for i, db := range []*sql.DB{dbA, dbB} {
		if _, err := db.ExecContext(ctx, `CREATE TABLE items (n int)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `INSERT INTO items VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
	}
	for i, c := range []struct {
		db  *sql.DB
		env *pgtest.Env
	}{{dbA, a}, {dbB, b}} {
		var n int
		var schema, app, user string
		err := c.db.QueryRowContext(ctx,
			`SELECT (SELECT n FROM items), current_schema(), current_setting('application_name'), current_user`).Scan(&n, &schema, &app, &user)
		if err != nil {
			t.Fatal(err)
		}
		if n != i || schema != c.env.Schema() || app != c.env.AppName() || user != c.env.Role() {
			t.Errorf("env %d sees n=%d schema=%q app=%q user=%q; want %d %q %q %q",
				i, n, schema, app, user, i, c.env.Schema(), c.env.AppName(), c.env.Role())
		}
	}
	// The admin pool is not one of the Env's backends.
	var adminApp string
	if err := a.Admin().QueryRowContext(ctx, `SELECT current_setting('application_name')`).Scan(&adminApp); err != nil {
		t.Fatal(err)
	}
	if adminApp == a.AppName() || adminApp == b.AppName() {
		t.Errorf("admin pool uses the Env's application_name %q", adminApp)
	}
}

func TestSchemaDroppedAtCleanup(t *testing.T) {
	t.Parallel()
	var schema string
	var admin *sql.DB
	t.Run("inner", func(t *testing.T) {
		e := pgtest.New(t)
		schema, admin = e.Schema(), e.Admin()
		if _, err := e.Open(t).ExecContext(t.Context(), `CREATE TABLE x (n int)`); err != nil {
			t.Fatal(err)
		}
	})
	var n, roles int
	err := admin.QueryRowContext(ctxFor(t, 10*time.Second),
		`SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = $1), (SELECT count(*) FROM pg_roles WHERE rolname = $1)`,
		schema).Scan(&n, &roles)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 || roles != 0 {
		t.Errorf("schema %s (%d) or its role (%d) still exists after cleanup", schema, n, roles)
	}
}

func TestTerminateAndRecover(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	e := pgtest.New(t)
	db := e.Open(t)

	// Two backends: one idle in a transaction, one idle in the pool.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	before := e.Backends(t)
	if len(before) != 2 {
		t.Fatalf("Backends = %v, want 2", before)
	}
	if n := e.IdleInTransaction(t); n != 1 {
		t.Fatalf("IdleInTransaction = %d, want 1", n)
	}

	if n := e.Terminate(t); n != 2 {
		t.Fatalf("Terminate = %d, want 2", n)
	}
	if got := e.Backends(t); len(got) != 0 {
		t.Fatalf("Backends after Terminate = %v, want none", got)
	}
	if err := tx.Commit(); err == nil {
		t.Fatal("commit on a terminated backend succeeded")
	}

	// The pool recovers: at most the first use of a dead idle connection
	// may fail, then a new backend answers.
	var failures int
	eventually(t, "a query to succeed after Terminate", func() bool {
		var one int
		if err := db.QueryRowContext(ctx, `SELECT 1`).Scan(&one); err != nil {
			failures++
			return false
		}
		return true
	})
	if failures > 1 {
		t.Errorf("%d queries failed after Terminate, want at most 1", failures)
	}
	after := e.Backends(t)
	if len(after) != 1 || slices.Contains(before, after[0]) {
		t.Errorf("Backends after recovery = %v, want one new backend (old: %v)", after, before)
	}
	if n := e.Terminate(t); n != 1 {
		t.Errorf("second Terminate = %d, want 1", n)
	}
}

func TestProxyCutAndRestore(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	e := pgtest.New(t)
	p := pgtest.NewProxy(t, e)

	conn, err := pgx.Connect(ctx, p.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var schema string
	if err := conn.QueryRow(ctx, `SELECT current_schema()`).Scan(&schema); err != nil {
		t.Fatal(err)
	}
	if schema != e.Schema() {
		t.Errorf("through the proxy current_schema = %q, want %q", schema, e.Schema())
	}
	if p.Conns() != 1 {
		t.Errorf("Conns = %d, want 1", p.Conns())
	}

	p.Cut()
	if _, err := conn.Exec(ctx, `SELECT 1`); err == nil {
		t.Fatal("query on a cut connection succeeded")
	}
	eventually(t, "Conns to drop to 0", func() bool { return p.Conns() == 0 })
	if c, err := pgx.Connect(ctx, p.DSN()); err == nil {
		c.Close(ctx)
		t.Fatal("new connection through a cut proxy succeeded")
	}

	p.Restore()
	conn2, err := pgx.Connect(ctx, p.DSN())
	if err != nil {
		t.Fatalf("connect after Restore: %v", err)
	}
	defer conn2.Close(context.Background())
	if _, err := conn2.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatalf("query after Restore: %v", err)
	}
	// The cut connection's pgx clean-up may still send a cancel request
	// through the proxy for a moment; then only conn2 is left.
	eventually(t, "Conns to settle at 1 after Restore", func() bool { return p.Conns() == 1 })
}

func TestProxyStall(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	e := pgtest.New(t)
	p := pgtest.NewProxy(t, e)
	db := sql.OpenDB(mustConnector(t, p.DSN()))
	t.Cleanup(func() { db.Close() })
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}

	p.Stall()
	qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := db.ExecContext(qctx, `SELECT 1`)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("query through a stalled proxy: err = %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("stalled query took %v to give up", d)
	}
	if p.Conns() == 0 {
		t.Error("Stall closed the connection")
	}

	p.Restore()
	var one int
	eventually(t, "a query to succeed after Restore", func() bool {
		return db.QueryRowContext(ctx, `SELECT 1`).Scan(&one) == nil
	})
}

func TestDSNViaProxyForSeveralConns(t *testing.T) {
	t.Parallel()
	ctx := ctxFor(t, 30*time.Second)
	e := pgtest.New(t)
	p := pgtest.NewProxy(t, e)
	db := sql.OpenDB(mustConnector(t, e.DSNVia(p.Addr())))
	t.Cleanup(func() { db.Close() })
	// Hold three connections open at once.
	var conns []*sql.Conn
	for range 3 {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if got := len(e.Backends(t)); got != 3 {
		t.Errorf("Backends = %d, want 3", got)
	}
	if p.Conns() != 3 {
		t.Errorf("Conns = %d, want 3", p.Conns())
	}
	for _, c := range conns {
		c.Close()
	}
}
