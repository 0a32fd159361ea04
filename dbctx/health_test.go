package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

// A backend killed while its connection sits idle between scopes must cost
// no failed statement: the health check finds it dead before use. The
// connections stay in the pool's keep (killWhileIdle), where the pool's
// check meets every kill; back in the *sql.DB, database/sql's own check
// (pgx pings a connection idle for a second) may find a death first, on a
// loaded machine every one, and the pool would have none to count.
func TestKilledWhileIdle(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 4})
	p.SetRecent(0) // look at every connection, however recently given back
	killWhileIdle(t, p, env)
	if st := p.Stats(); st.Discarded.Dead == 0 {
		t.Errorf("the socket check found no dead connection: %+v", st)
	}
}

// A connection given back a moment ago (kept by the pool, or back in the
// *sql.DB) is pinned without the socket check; if its backend died in that
// moment, the statement retry covers a statement, Atomic's BEGIN included,
// and raw access looks first.
func TestKilledJustAfterRelease(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1}) // one connection
	p.SetRecent(time.Hour)                              // never look after a give-back
	ctx := context.Background()
	cases := []struct {
		name string
		use  func(ctx context.Context, s *dbctx.Scope) error
		want dbctx.Stats // what the case adds
	}{
		{"statement", func(ctx context.Context, s *dbctx.Scope) error {
			n, err := queryInt(ctx, s, "SELECT 2")
			if err == nil && n != 2 {
				t.Errorf("got %d", n)
			}
			return err
		}, dbctx.Stats{Retries: 1}},
		{"atomic", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, "SELECT 3")
				return err
			})
		}, dbctx.Stats{Retries: 1}},
		{"raw", func(ctx context.Context, s *dbctx.Scope) error {
			c, err := s.Conn(ctx)
			if err != nil {
				return err
			}
			var n int
			if err := c.QueryRowContext(ctx, "SELECT 4").Scan(&n); err != nil || n != 4 {
				return fmt.Errorf("raw connection: %d, %w", n, err)
			}
			return nil
		}, dbctx.Stats{Discarded: dbctx.Discards{Dead: 1}}},
	}
	for _, kept := range []bool{true, false} {
		for _, tc := range cases {
			killJustReleased(t, p, env, kept)
			before := p.Stats()
			if err := p.Do(ctx, tc.use); err != nil {
				t.Fatalf("%s (kept %v) after the kill: %v", tc.name, kept, err)
			}
			st := p.Stats()
			if got := st.Retries - before.Retries; got != tc.want.Retries {
				t.Errorf("%s (kept %v): %d retries, want %d", tc.name, kept, got, tc.want.Retries)
			}
			if got := st.Discarded.Dead - before.Discarded.Dead; got != tc.want.Discarded.Dead {
				t.Errorf("%s (kept %v): %d discarded dead, want %d", tc.name, kept, got, tc.want.Discarded.Dead)
			}
		}
	}
}

// The health check looks under TLS (pgx's default on loopback is
// sslmode=prefer) at the TCP socket.
func TestKilledWhileIdleTLS(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	env := newEnv(t)
	db := openDSN(t, tlsDSN(t, env))
	killWhileIdle(t, poolOn(t, env, db, &dbctx.Options{MaxWorkers: 4}), env)
}

// tlsDSN returns env's connection string with sslmode=require, after
// checking that the server offers TLS (else the test is skipped) and that
// a connection made with it uses TLS.
func tlsDSN(t *testing.T, env *pgtest.Env) string {
	t.Helper()
	var ssl string
	if err := env.Admin().QueryRow("SHOW ssl").Scan(&ssl); err != nil || ssl != "on" {
		t.Skipf("the server does not offer TLS (ssl=%q, %v)", ssl, err)
	}
	dsn, err := pgserver.WithParams(env.DSN(), "sslmode", "require")
	if err != nil {
		t.Fatal(err)
	}
	var tls bool
	db := openDSN(t, dsn)
	if err := db.QueryRow("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&tls); err != nil || !tls {
		t.Fatalf("connection is not TLS: %v %v", tls, err)
	}
	db.Close() // its backend gone before the test counts the role's
	dbtest.Eventually(t, "the check's backend gone", func() bool { return len(env.Backends(t)) == 0 })
	return dsn
}

func killWhileIdle(t *testing.T, p *dbctx.Pool, env *pgtest.Env) {
	ctx := context.Background()
	p.SetKeepIdle(time.Hour) // see TestKilledWhileIdle
	p.SetKeepFor(time.Hour)
	const rounds = 20
	for i := range rounds {
		// Warm several connections so the *sql.DB holds idle ones.
		done := make(chan error, 3)
		for range 3 {
			go func() {
				done <- p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, "SELECT pg_sleep(0.01)")
					return err
				})
			}()
		}
		for range 3 {
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if n := env.Terminate(t); n == 0 {
			t.Fatalf("round %d: no backend to kill", i)
		}
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			n, err := queryInt(ctx, s, "SELECT $1::int", i)
			if err == nil && n != i {
				t.Errorf("got %d, want %d", n, i)
			}
			return err
		})
		if err != nil {
			t.Fatalf("round %d: statement after idle kill failed: %v", i, err)
		}
	}
	st := p.Stats()
	if st.Discarded.Dead+st.Retries == 0 {
		t.Errorf("no dead connection detected: %+v", st)
	}
	t.Logf("dead discarded %d, retries %d", st.Discarded.Dead, st.Retries)
}

// A backend killed while it runs a statement inside a transaction, after
// an earlier statement of it, fails that statement with a clear error
// (the transaction is lost: nothing is run again); the next unit of work
// succeeds. The first statement of an Atomic, whose BEGIN goes out with
// it, is run again like any first statement (TestAtomicFirstStatementRetried).
func TestKilledMidQueryInTx(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	ctx := context.Background()
	killed := dbtest.KillWhenActive(t, env, "SELECT pg_sleep")
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			_, err := s.ExecContext(ctx, "SELECT pg_sleep(30)")
			return err
		})
	})
	if n := <-killed; n != 1 {
		t.Fatalf("killed %d backends, want 1", n)
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Fatalf("got %v, want the server's admin_shutdown error", err)
	}
	sctx, scope := p.Scope(ctx)
	defer scope.End()
	n, err := dbctx.DoValue(sctx, func(ctx context.Context, s *dbctx.Scope) (int, error) {
		return queryInt(ctx, s, "SELECT 42")
	})
	if err != nil || n != 42 {
		t.Fatalf("next unit of work: %d, %v", n, err)
	}
	if st := p.Stats(); st.Discarded.Broken == 0 || st.Retries != 0 {
		t.Errorf("want a broken discard and no retry: %+v", st)
	}
}

// Outside a transaction a statement whose session the server ended had no
// effect, and is run once more on a fresh connection.
func TestKilledMidQueryRetried(t *testing.T) {
	t.Parallel()
	forDrivers(t, testKilledMidQueryRetried)
}

func testKilledMidQueryRetried(t *testing.T, drv string) {
	p, env := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 2})
	ctx := context.Background()
	killed := dbtest.KillWhenActive(t, env, "SELECT pg_sleep")
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SELECT pg_sleep(0.3)")
		return err
	})
	if n := <-killed; n != 1 {
		t.Fatalf("killed %d backends, want 1", n)
	}
	if err != nil {
		t.Fatalf("statement was not retried: %v", err)
	}
	if st := p.Stats(); st.Retries != 1 {
		t.Errorf("retries = %d, want 1", st.Retries)
	}
}

// Rows already delivered are never retried: the caller sees the error.
func TestNoRetryAfterRows(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		// A result far larger than the socket buffers: the server is still
		// sending it when the first rows arrive.
		rows, err := s.QueryContext(ctx, "SELECT g, repeat('x', 1000) FROM generate_series(1, 10000000) g")
		if err != nil {
			return err
		}
		defer rows.Close()
		if !rows.Next() {
			return errors.New("no first row")
		}
		env.Terminate(t)
		for rows.Next() {
		}
		return rows.Err()
	})
	if err == nil {
		t.Fatal("want the kill to reach the caller")
	}
	if st := p.Stats(); st.Retries != 0 {
		t.Errorf("retries = %d, want 0", st.Retries)
	}
}

// Cutting every TCP connection makes work fail cleanly while the database
// is unreachable; once it is back the pool recovers by itself.
func TestProxyCut(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	proxy := newProxy(t, env)
	db := openDSN(t, proxy.DSN())
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 2})
	ctx := context.Background()
	ping := func() error {
		return p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			return err
		})
	}
	if err := ping(); err != nil {
		t.Fatal(err)
	}
	proxy.Cut()
	if err := ping(); err == nil {
		t.Fatal("want an error while the database is unreachable")
	}
	proxy.Restore()
	if err := ping(); err != nil {
		t.Fatalf("after restore: %v", err)
	}
}

// A stalled connection holds its caller only until the caller's deadline;
// the slot is freed and the connection discarded.
func TestProxyStall(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	env := newEnv(t)
	proxy := newProxy(t, env)
	db := openDSN(t, proxy.DSN())
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 2})
	ctx := context.Background()
	query := func(ctx context.Context) error {
		return p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			return err
		})
	}
	if err := query(ctx); err != nil {
		t.Fatal(err)
	}
	proxy.Stall()
	tctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	err := query(tctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) && !pgconn.Timeout(err) {
		t.Fatalf("got %v, want a deadline error", err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
		t.Fatalf("slot or connection held after the deadline: %+v", st)
	}
	proxy.Restore()
	if err := query(ctx); err != nil {
		t.Fatalf("after restore: %v", err)
	}
}

// A canceled context cancels the statement on the server, frees the slot
// and discards the connection.
func TestCancelMidQuery(t *testing.T) {
	t.Parallel()
	forDrivers(t, testCancelMidQuery)
}

func testCancelMidQuery(t *testing.T, drv string) {
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	p, env := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 2})
	ctx, cancel := context.WithCancel(context.Background())
	canceled := dbtest.WhenActive(t, env, "SELECT pg_sleep", cancel)
	defer func() { <-canceled }()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SELECT pg_sleep(30)")
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	eventually(t, "the statement to stop on the server", func() bool {
		return activeQueries(t, env, "SELECT pg_sleep") == 0
	})
	st := p.Stats()
	if st.InUse != 0 || st.Pinned != 0 {
		t.Fatalf("slot or connection held after cancel: %+v", st)
	}
	if st.Discarded.Canceled != 1 {
		t.Errorf("canceled discards = %d, want 1", st.Discarded.Canceled)
	}
}

// Once a scope has set session state, a statement that finds its
// connection dead is not run again on another connection, which would
// lack that state: Atomic's BEGIN, a plain statement and raw access all
// fail instead of running without it.
func TestNoRetryAfterSessionState(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	p.SetRecent(time.Hour) // the dead connection is not looked at: the retry decides
	ctx := context.Background()
	uses := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"statement": func(ctx context.Context, s *dbctx.Scope) error {
			var v string
			return s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&v)
		},
		"atomic": func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, "SELECT current_setting('app.tenant')")
				return err
			})
		},
		"raw": func(ctx context.Context, s *dbctx.Scope) error {
			c, err := s.Conn(ctx)
			if err != nil {
				return err
			}
			_, err = c.ExecContext(ctx, "SELECT current_setting('app.tenant')")
			return err
		},
	}
	for name, use := range uses {
		warmTwice(t, p)
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "SELECT set_config('app.tenant', '42', false)"); err != nil {
				return fmt.Errorf("set_config: %w", err)
			}
			if n := env.Terminate(t); n != 1 {
				t.Fatalf("killed %d backends, want 1", n)
			}
			return use(ctx, s)
		})
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "57P01" {
			t.Errorf("%s after the kill: %v, want the 57P01 of the lost session", name, err)
		}
	}
}

// A statement that sets session state and is run again on another
// connection leaves that state on the new connection, and it is reset
// before that connection is given back.
func TestRetriedStatementKeepsItsState(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	p.SetRecent(time.Hour)
	ctx := context.Background()
	killJustReleased(t, p, env, true)
	before := p.Stats()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.ExecContext(ctx, "SELECT set_config('app.tenant', '42', false)"); err != nil {
			return err
		}
		var v string
		if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&v); err != nil || v != "42" {
			return fmt.Errorf("after the retried set_config: %q, %w", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.Retries-before.Retries != 1 {
		t.Fatalf("retries +%d; want +1", st.Retries-before.Retries)
	}
	var v string
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.tenant', true), '')").Scan(&v)
	}); err != nil || v != "" {
		t.Fatalf("the next scope sees app.tenant = %q (%v), want it reset", v, err)
	}
	// The reset ran in the next scope's first round trip.
	if st := p.Stats(); st.Resets-before.Resets != 1 {
		t.Fatalf("resets +%d; want +1", st.Resets-before.Resets)
	}
}

// killJustReleased kills the backend of p's one connection right after a
// scope gave it back: kept by the pool for the next scope, or (kept false)
// given back to the *sql.DB.
func killJustReleased(t *testing.T, p *dbctx.Pool, env *pgtest.Env, kept bool) {
	t.Helper()
	warmTwice(t, p)
	if kept {
		p.SetKeepIdle(time.Hour)
		warm(t, p)
	}
	// The pool's connection alone: a backend of the role that another
	// connection closed may take a moment to exit on a loaded machine.
	dbtest.Eventually(t, "the pool's backend alone", func() bool { return len(env.Backends(t)) == 1 })
	if n := env.Terminate(t); n != 1 {
		t.Fatalf("killed %d backends, want 1", n)
	}
}

// warmTwice has p's connection checked out of the *sql.DB twice, the pool
// keeping none: pgx's stdlib pings a connection at its first reuse, which
// would find a killed backend on its own.
func warmTwice(t *testing.T, p *dbctx.Pool) {
	t.Helper()
	p.SetKeepIdle(0)
	warm(t, p)
	warm(t, p)
}

func warm(t *testing.T, p *dbctx.Pool) {
	t.Helper()
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := queryInt(ctx, s, "SELECT 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
}
