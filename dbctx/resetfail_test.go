package dbctx_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// A reset that fails leaves the statement after it unrun on that
// connection, which is discarded (Stats.Discarded.Reset); the statement
// runs on another, once: PostgreSQL counts the rows.
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
				before := p.Stats().Discarded.Reset
				if err := insert(n); err != nil {
					t.Fatalf("insert %d after a reset that fails: %v, want it run on another connection", n, err)
				}
				if d := p.Stats().Discarded.Reset - before; d != 1 {
					t.Fatalf("insert %d: %d connections discarded for their reset, want 1", n, d)
				}
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

// The reset owed by an earlier scope that ran code shares the implicit
// transaction of the next scope's first statement (in cache_statement
// mode; elsewhere it has a transaction of its own): where that statement
// fails, at once or midway through its rows, alone or in a batch, the
// reset rolls back with it and is owed still, so the next scope on the
// backend pays it and finds nothing of the earlier scope's. Where the
// earlier scope listened on a channel (UNLISTEN takes effect at commit)
// or PREPAREd a statement, the reset goes in a transaction of its own
// instead, and the statement after it sees nothing either. PostgreSQL is
// asked what the session holds, by the statement that follows the reset.
func TestResetRolledBackWithStatement(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets a session")
	leaves := []struct {
		name   string
		stmts  []string
		shared bool // the reset shares the next statement's transaction
	}{
		{"code", []string{
			// Set by code: a SET in view makes the reset take a
			// transaction of its own (TestTxDefaultsDoNotCarry).
			"DO $$BEGIN PERFORM set_config('statement_timeout', '5s', false); END$$",
			// A temporary table in view makes it take one too
			// (TestNameResolutionDoesNotCarry).
			"DO $$BEGIN CREATE TEMP TABLE scratch (n int); END$$",
			"SELECT pg_advisory_lock(42)",
		}, true},
		{"listen", []string{"CREATE TEMP TABLE scratch (n int)", "LISTEN dbscope_test"}, false},
		{"prepare", []string{"SET statement_timeout = '5s'", "PREPARE dbscope_p AS SELECT 1"}, false},
	}
	const held = `SELECT (current_setting('statement_timeout') <> '0')::int
		+ (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int
		+ (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::int
		+ (SELECT count(*) FROM pg_listening_channels())::int
		+ (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::int`
	const midway = "SELECT 1 / (3 - g) FROM generate_series(1, 5) g"
	fails := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"exec": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT 1 / 0")
			return err
		},
		"rows": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.QueryContext(ctx, midway)
			if err != nil {
				return err
			}
			defer rows.Close()
			_, err = scanInts(rows)
			return err
		},
		"pgx rows": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.Query(ctx, midway)
			if err != nil {
				return err
			}
			defer rows.Close()
			_, err = scanInts(rows)
			return err
		},
		"pgx batch": func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			b.Queue("SELECT 1 / 0")
			return s.SendBatch(ctx, b).Close()
		},
	}
	for _, mode := range []string{"cache_statement", "exec", "cache_describe", "simple_protocol"} {
		for name, fail := range fails {
			for _, leave := range leaves {
				t.Run(mode+"/"+name+"/"+leave.name, func(t *testing.T) {
					t.Parallel()
					env := newEnv(t)
					p := countedPool(t, env, newProxy(t, env), mode)
					ctx := context.Background()
					var pids [3]int
					unit := func(i int, f func(ctx context.Context, s *dbctx.Scope) error) error {
						return p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) (err error) {
							if i > 0 {
								// The first statement, with the reset before it.
								if err := f(ctx, s); err != nil {
									return err
								}
							}
							pids[i], err = backendPID(ctx, s)
							if err == nil && i == 0 {
								err = f(ctx, s)
							}
							return err
						})
					}
					if err := unit(0, func(ctx context.Context, s *dbctx.Scope) error {
						for _, q := range leave.stmts {
							if _, err := s.ExecContext(ctx, q); err != nil {
								return err
							}
						}
						return nil
					}); err != nil {
						t.Fatal(err)
					}
					resets := p.Stats().Resets
					var pe *pgconn.PgError
					if err := unit(1, fail); !errors.As(err, &pe) || pe.Code != "22012" {
						t.Fatalf("the failing statement: %v, want division by zero", err)
					}
					// Only where the check is prepared on the connection
					// (cache_statement), and not before a pgx batch, where
					// no check goes first: elsewhere the reset has a
					// transaction of its own.
					shared := leave.shared && mode == "cache_statement" && name != "pgx batch"
					if n := p.Stats().Resets - resets; shared && n != 0 {
						t.Errorf("Stats.Resets: %d after the statement that failed, want 0 (rolled back with it)", n)
					} else if !shared && n != 1 {
						t.Errorf("Stats.Resets: %d after the statement that failed, want 1 (committed before it)", n)
					}
					// The probe's scope gets the reset again, before a
					// statement that succeeds.
					var left int
					if err := unit(2, func(ctx context.Context, s *dbctx.Scope) (err error) {
						left, err = queryInt(ctx, s, held)
						return err
					}); err != nil {
						t.Fatal(err)
					}
					if left != 0 {
						t.Errorf("the next scope found %d kinds of the first scope's state", left)
					}
					if n := p.Stats().Resets - resets; n != 1 {
						t.Errorf("Stats.Resets: %d after the next scope, want 1", n)
					}
					if pids[0] != pids[2] {
						t.Fatalf("scopes ran on backends %d and %d; the test needs one", pids[0], pids[2])
					}
				})
			}
		}
	}
}
