package dbctx_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// A reset owed after code ran goes as a Query message of its own before
// the next statement (pipe.go). Where the reset changes a parameter the
// server reports, pgconn does not see the report: the connection must
// not be given to another scope with pgconn's copy out of step, and the
// statement after the reset sees the session reset.
func TestResetReportedParameter(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets a session")
	for _, mode := range []string{"cache_statement", "exec", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			p := countedPool(t, env, newProxy(t, env), mode)
			ctx := context.Background()
			read := func() (tz string, pid int) {
				t.Helper()
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					return s.QueryRowContext(ctx, "SELECT current_setting('TimeZone'), pg_backend_pid()").Scan(&tz, &pid)
				}); err != nil {
					t.Fatal(err)
				}
				return tz, pid
			}
			base, _ := read()
			other := "Asia/Tokyo"
			if base == other {
				other = "America/Lima"
			}
			// Code (a DO block) changes TimeZone: the reset owed sweeps,
			// and goes as a Query.
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "DO $$BEGIN PERFORM set_config('TimeZone', '"+other+"', false); END$$")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			before := p.Stats().Discarded.Unresettable
			tz, pid := read()
			if tz != base {
				t.Fatalf("after the reset the statement sees TimeZone %q, want %q", tz, base)
			}
			if n := p.Stats().Discarded.Unresettable - before; n != 1 {
				t.Fatalf("%d connections closed for a parameter report pgconn did not see, want 1", n)
			}
			// The next scope has another connection, whose pgconn knows
			// what the server reported.
			var reported string
			var pid2 int
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				if err := s.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid2); err != nil {
					return err
				}
				return s.Pgx(ctx, func(c *pgx.Conn) error {
					reported = c.PgConn().ParameterStatus("TimeZone")
					return nil
				})
			}); err != nil {
				t.Fatal(err)
			}
			if pid2 == pid {
				t.Errorf("the connection whose pgconn missed a report was given to the next scope (backend %d)", pid)
			}
			if reported != base {
				t.Errorf("pgconn reports TimeZone %q, want %q", reported, base)
			}
		})
	}
}

// A reset that fails leaves the statement after it unrun: PostgreSQL
// counts the rows.
func TestResetFailsStatementNotRun(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets a session")
	for _, mode := range []string{"cache_statement", "exec", "cache_describe", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (id serial PRIMARY KEY, n int)")
			p := countedPoolWith(t, env, newProxy(t, env), mode, dbctx.Options{
				ResetSQL: dbctx.DefaultResetSQL + "; SELECT 'the reset fails'::int",
			})
			ctx := context.Background()
			insert := func(n int) error {
				return p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, "INSERT INTO t (n) VALUES ($1)", n)
					return err
				})
			}
			if err := insert(1); err != nil {
				t.Fatal(err)
			}
			for n := 2; n <= 3; n++ {
				err := insert(n)
				if err == nil || !strings.Contains(err.Error(), "the reset fails") {
					t.Fatalf("insert %d after a reset that fails: %v, want the reset's error", n, err)
				}
			}
			var rows int
			if err := env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM "+env.Schema()+".t").Scan(&rows); err != nil {
				t.Fatal(err)
			}
			if rows != 1 {
				t.Fatalf("%d rows, want 1: a statement ran after a reset that failed", rows)
			}
		})
	}
}

// A backend killed while idle, after a write left its reset owed: the next
// write meets the kill when it reads the reset's answer (the socket check
// skipped, as it is for a connection given back moments before), is
// retried on a fresh connection, and runs once.
func TestResetQueryAfterIdleKill(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "terminates backends")
	for _, mode := range []string{"cache_statement", "exec", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (id serial PRIMARY KEY, n int)")
			p := countedPool(t, env, newProxy(t, env), mode)
			p.SetRecent(time.Hour) // never looked at: the kill is met by the statement
			ctx := context.Background()
			for n := 1; n <= 3; n++ {
				before := p.Stats().Retries
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, "INSERT INTO t (n) VALUES ($1)", n)
					return err
				}); err != nil {
					t.Fatalf("insert %d: %v", n, err)
				}
				if n > 1 {
					if r := p.Stats().Retries - before; r != 1 {
						t.Fatalf("insert %d: %d retries, want 1", n, r)
					}
				}
				env.Terminate(t)
			}
			var rows, distinct int
			if err := env.Admin().QueryRowContext(ctx, "SELECT count(*), count(DISTINCT n) FROM "+env.Schema()+".t").Scan(&rows, &distinct); err != nil {
				t.Fatal(err)
			}
			if rows != 3 || distinct != 3 {
				t.Fatalf("%d rows (%d distinct), want 3: each insert once", rows, distinct)
			}
		})
	}
}
