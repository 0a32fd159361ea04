package dbctx_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// Code the classifier cannot read (DO, a function, CALL) may DEALLOCATE
// the statements pgx keeps prepared on the connection, and dbscope's:
// the next scope's statements, which pgx (and dbscope) bind by those
// names, must not fail for it (SQLSTATE 26000, prepared statement
// "stmtcache_…" or "dbscope_N" does not exist), whatever path runs them:
// the scope's methods, Atomic past its first statement, a batch,
// BeginTx's *sql.Tx, Scope.Pgx.
func TestCodeDeallocatesDriverStatements(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	q := func(k int) string { return fmt.Sprintf("SELECT %d + $1::int", k) }
	paths := []struct {
		name string
		run  func(ctx context.Context, s *dbctx.Scope) error
	}{
		{"QueryRowContext", func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, q(1), 1)
			return err
		}},
		{"QueryRow", func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			return s.QueryRow(ctx, q(2), 1).Scan(&n)
		}},
		{"Exec", func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.Exec(ctx, q(3), 1)
			return err
		}},
		{"ExecContext", func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, q(4), 1)
			return err
		}},
		{"Query", func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.Query(ctx, q(5), 1)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		}},
		{"QueryContext", func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.QueryContext(ctx, q(6), 1)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		}},
		{"Atomic", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := queryInt(ctx, s, q(7), 1); err != nil {
					return err
				}
				var n int
				if err := s.QueryRow(ctx, q(2), 1).Scan(&n); err != nil {
					return fmt.Errorf("second statement: %w", err)
				}
				_, err := s.Exec(ctx, q(3), 1)
				return err
			})
		}},
		{"SendBatch", func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue(q(1), 1)
			b.Queue(q(2), 1)
			return s.SendBatch(ctx, b).Close()
		}},
		{"BeginTx", func(ctx context.Context, s *dbctx.Scope) error {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			var n int
			if err := tx.QueryRowContext(ctx, q(1), 1).Scan(&n); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, q(3), 1); err != nil {
				return err
			}
			return tx.Commit()
		}},
		{"Pgx", func(ctx context.Context, s *dbctx.Scope) error {
			return s.Pgx(ctx, func(conn *pgx.Conn) error {
				var n int
				if err := conn.QueryRow(ctx, q(1), 1).Scan(&n); err != nil {
					return err
				}
				_, err := conn.Exec(ctx, q(3), 1)
				return err
			})
		}},
	}
	eachExecMode(t, func(t *testing.T, mode string, _ int) {
		env := newEnv(t)
		mustExec(t, env.Admin(), `CREATE FUNCTION "`+env.Schema()+`".dealloc_all() RETURNS void LANGUAGE plpgsql AS
			$$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$`)
		mustExec(t, env.Admin(), `CREATE PROCEDURE "`+env.Schema()+`".dealloc_proc() LANGUAGE plpgsql AS
			$$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$`)
		for _, tc := range []struct {
			name    string
			before  []string // dirty scopes before the code's: dbscope's reset statements prepared
			dealloc string
		}{
			{"DO", nil, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$"},
			{"function", nil, "SELECT dealloc_all()"},
			{"CALL", nil, "CALL dealloc_proc()"},
			{"DO after resets", []string{"SET app.x = '1'", "SET app.x = '2'"}, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$"},
			// Both of the check's findings at once: the statements
			// are dropped and the one PREPAREd in SQL swept.
			{"DO that prepares", nil, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; EXECUTE 'PREPARE mine AS SELECT 1'; END$$"},
		} {
			for _, path := range paths {
				t.Run(tc.name+"/"+path.name, func(t *testing.T) {
					t.Parallel()
					p := onePoolInMode(t, env, mode, dbctx.Options{})
					ctx := context.Background()
					// Every path's statements prepared on the
					// connection by pgx, in clean scopes, then the
					// code, then the path in the next scope.
					for k := 1; k <= 7; k++ {
						if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
							_, err := s.Exec(ctx, q(k), 1)
							return err
						}); err != nil {
							t.Fatalf("%s, before: %v", q(k), err)
						}
					}
					for _, stmt := range append(tc.before, tc.dealloc) {
						if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
							_, err := s.ExecContext(ctx, stmt)
							return err
						}); err != nil {
							t.Fatalf("%s: %v", stmt, err)
						}
					}
					if err := p.Do(ctx, path.run); err != nil {
						t.Errorf("in the scope after %q: %v", tc.dealloc, err)
					}
					if d := p.Stats().Discarded; d.Reset+d.Broken+d.Unresettable != 0 {
						t.Errorf("in the scope after %q: a connection discarded: %+v", tc.dealloc, d)
					}
					if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
						n, err := queryInt(ctx, s, "SELECT count(*)::int FROM pg_prepared_statements WHERE from_sql")
						if err == nil && n != 0 {
							err = fmt.Errorf("%d statements PREPAREd in SQL left", n)
						}
						return err
					}); err != nil {
						t.Error(err)
					}
					// And every other path after it, on the connection
					// it leaves.
					for _, w := range paths {
						if err := p.Do(ctx, w.run); err != nil {
							t.Errorf("%s, after: %v", w.name, err)
						}
					}
				})
			}
		}
	})
}

// TestCodeKeepsDriverStatements: where code ran that deallocated nothing,
// the reset's check finds nothing missing, and the statements pgx keeps
// prepared stay as they were (no DeallocateAll, no round trip more).
func TestCodeKeepsDriverStatements(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	p := onePoolInMode(t, env, "cache_statement", dbctx.Options{})
	ctx := context.Background()
	const list = "SELECT coalesce(string_agg(name || ' ' || prepare_time, ',' ORDER BY name), '') FROM pg_prepared_statements WHERE name LIKE 'stmtcache%'"
	prepared := func() (had string) {
		t.Helper()
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRow(ctx, list).Scan(&had)
		}); err != nil {
			t.Fatal(err)
		}
		return had
	}
	for k := 1; k <= 3; k++ {
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.Exec(ctx, fmt.Sprintf("SELECT %d + $1::int", k), 1)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	before := prepared()
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.Exec(ctx, "DO $$BEGIN PERFORM 1; END$$")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if after := prepared(); after != before {
		t.Errorf("pgx's statements prepared anew after code that deallocated nothing:\nbefore %s\nafter  %s", before, after)
	}
}
