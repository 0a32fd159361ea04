package dbctx_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

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
// write, with the reset before it in its round trip, meets the kill (the
// socket check skipped, as it is for a connection given back moments
// before), is retried on a fresh connection, and runs once.
func TestResetAfterIdleKill(t *testing.T) {
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
