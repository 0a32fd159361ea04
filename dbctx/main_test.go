package dbctx_test

import (
	"context"
	"database/sql"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// newPool returns a pool over a fresh schema of its own, and checks the
// invariants of DESIGN.md when the test ends: no slot in use, nothing
// pinned, nothing of ours idle in a transaction.
func newPool(t *testing.T, opts *dbctx.Options) (*dbctx.Pool, *pgtest.Env) {
	t.Helper()
	env := pgtest.New(t)
	return poolOn(t, env, env.Open(t), opts), env
}

func poolOn(t *testing.T, env *pgtest.Env, db *sql.DB, opts *dbctx.Options) *dbctx.Pool {
	t.Helper()
	p := dbctx.New(db, opts)
	t.Cleanup(func() {
		dbtest.Clean(t, p, env)
		p.Close()
	})
	return p
}

func newEnv(t *testing.T) *pgtest.Env { return pgtest.New(t) }

// The drivers a test may open its *sql.DB with: pgx's, and another that
// wraps it as the drivers that instrument database/sql do
// (pgtest.Env.OpenWrapped), on which dbctx cannot look into the
// connection and takes database/sql's paths.
const (
	pgxDriver   = "pgx"
	otherDriver = "another driver"
)

// forDrivers runs test once per driver, as parallel subtests.
func forDrivers(t *testing.T, test func(t *testing.T, drv string)) {
	for _, drv := range []string{pgxDriver, otherDriver} {
		t.Run(drv, func(t *testing.T) {
			t.Parallel()
			test(t, drv)
		})
	}
}

// openWith opens env's *sql.DB with driver drv.
func openWith(t *testing.T, env *pgtest.Env, drv string) *sql.DB {
	if drv == otherDriver {
		return env.OpenWrapped(t)
	}
	return env.Open(t)
}

// newPoolWith is newPool with driver drv.
func newPoolWith(t *testing.T, drv string, opts *dbctx.Options) (*dbctx.Pool, *pgtest.Env) {
	t.Helper()
	env := pgtest.New(t)
	return poolOn(t, env, openWith(t, env, drv), opts), env
}

func newProxy(t *testing.T, env *pgtest.Env) *pgtest.Proxy { return pgtest.NewProxy(t, env) }

// countedPool returns a pool of one slot and one connection through px, in
// pgx's exec mode mode, for tests that count the round trips of units of
// work (px.Ready): the connection stays in the pool's keep, since on a
// loaded machine its trips back to the *sql.DB (a cleanup, database/sql's
// ping after a second idle) would add round trips that are no unit's.
func countedPool(t *testing.T, env *pgtest.Env, px *pgtest.Proxy, mode string) *dbctx.Pool {
	t.Helper()
	return countedPoolWith(t, env, px, mode, dbctx.Options{})
}

// countedPoolWith is countedPool with opts (MaxWorkers set to 1).
func countedPoolWith(t *testing.T, env *pgtest.Env, px *pgtest.Proxy, mode string, opts dbctx.Options) *dbctx.Pool {
	t.Helper()
	p := poolInMode(t, env, px.DSN(), mode, opts)
	p.SetKeepIdle(time.Hour)
	p.SetKeepFor(time.Hour)
	return p
}

func openDSN(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func eventually(t *testing.T, what string, cond func() bool) { dbtest.Eventually(t, what, cond) }

func queryInt(ctx context.Context, s *dbctx.Scope, q string, args ...any) (int, error) {
	var n int
	err := s.QueryRowContext(ctx, q, args...).Scan(&n)
	return n, err
}

func mustExec(t *testing.T, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, q string, args ...any) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q, args...); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// backendPID returns the server process of the scope's connection.
func backendPID(ctx context.Context, s *dbctx.Scope) (int, error) {
	return queryInt(ctx, s, "SELECT pg_backend_pid()")
}

func activeQueries(t *testing.T, env *pgtest.Env, prefix string) int {
	return dbtest.ActiveQueries(t, env, prefix)
}

// quiet is a logger that drops what it is told, for tests that provoke
// warnings.
func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// eachExecMode runs f as a parallel subtest in four of pgx's exec modes,
// with the mode's index (for seeds): cache_statement is skipped behind a
// pooler, since pgx prepares its statements in one transaction and runs
// them in later ones, which may go to another server connection.
func eachExecMode(t *testing.T, f func(t *testing.T, mode string, i int)) {
	for i, mode := range []string{"cache_statement", "exec", "simple_protocol", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			if mode == "cache_statement" {
				pgtest.SkipPooled(t, "cache_statement needs one server session")
			}
			f(t, mode, i)
		})
	}
}

// onePoolInMode is onePool in pgx's exec mode mode.
func onePoolInMode(t *testing.T, env *pgtest.Env, mode string, opts dbctx.Options) *dbctx.Pool {
	t.Helper()
	return poolInMode(t, env, env.DSN(), mode, opts)
}

// poolInMode returns a pool of one slot and one connection to dsn in
// pgx's exec mode mode.
func poolInMode(t *testing.T, env *pgtest.Env, dsn, mode string, opts dbctx.Options) *dbctx.Pool {
	t.Helper()
	dsn, err := pgserver.WithParams(dsn, "default_query_exec_mode", mode)
	if err != nil {
		t.Fatal(err)
	}
	db := openDSN(t, dsn)
	db.SetMaxOpenConns(1)
	opts.MaxWorkers = 1
	return poolOn(t, env, db, &opts)
}

// onePool returns a pool of one slot over one physical connection of
// env's, so that consecutive scopes share a session.
func onePool(t *testing.T, env *pgtest.Env, opts dbctx.Options) *dbctx.Pool {
	t.Helper()
	db := env.Open(t)
	db.SetMaxOpenConns(1)
	opts.MaxWorkers = 1
	return poolOn(t, env, db, &opts)
}

// keepAcrossMute keeps p's connection in its keep between units of work,
// rather than give it back to the *sql.DB 10 ms after: a test that mutes
// its proxy before a unit's first statement would otherwise have pgx's
// stdlib ping the connection as database/sql hands it out again after a
// second idle (a loaded machine), and the ping's answer never come.
func keepAcrossMute(p *dbctx.Pool) {
	p.SetKeepIdle(time.Hour)
	p.SetKeepFor(time.Hour)
}
