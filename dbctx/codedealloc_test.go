package dbctx_test

import (
	"context"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// Code the classifier cannot read (DO, a function, CALL) may DEALLOCATE
// the statements pgx keeps prepared on the connection, and dbscope's:
// the next scope's statements, which pgx binds by those names, must not
// fail for it (SQLSTATE 26000, prepared statement "stmtcache_…" does not
// exist), whatever path runs them.
func TestCodeDeallocatesDriverStatements(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	for _, tc := range []struct {
		name    string
		before  []string // dirty scopes before the code's: dbscope's reset statements prepared
		dealloc string
	}{
		{"DO", nil, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$"},
		{"function", nil, "SELECT dealloc_all()"},
		{"DO after resets", []string{"SET app.x = '1'", "SET app.x = '2'"}, "DO $$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$"},
	} {
		dealloc := tc.dealloc
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), `CREATE FUNCTION "`+env.Schema()+`".dealloc_all() RETURNS void LANGUAGE plpgsql AS
				$$BEGIN EXECUTE 'DEALLOCATE ALL'; END$$`)
			p := onePoolInMode(t, env, "cache_statement", dbctx.Options{})
			ctx := context.Background()
			stmts := []func(ctx context.Context, s *dbctx.Scope) error{
				func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT 1 + $1::int", 1)
					return err
				},
				func(ctx context.Context, s *dbctx.Scope) error {
					var n int
					return s.QueryRow(ctx, "SELECT 2 + $1::int", 1).Scan(&n)
				},
				func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.Exec(ctx, "SELECT 3 + $1::int", 1)
					return err
				},
				func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, "SELECT 4 + $1::int", 1)
					return err
				},
				func(ctx context.Context, s *dbctx.Scope) error {
					rows, err := s.Query(ctx, "SELECT 5 + $1::int", 1)
					if err != nil {
						return err
					}
					rows.Close()
					return rows.Err()
				},
				func(ctx context.Context, s *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						_, err := queryInt(ctx, s, "SELECT 7 + $1::int", 1)
						return err
					})
				},
				func(ctx context.Context, s *dbctx.Scope) error {
					rows, err := s.QueryContext(ctx, "SELECT 6 + $1::int", 1)
					if err != nil {
						return err
					}
					rows.Close()
					return rows.Err()
				},
			}
			// Each statement prepared on the connection, then the code,
			// then each statement again in a scope of its own.
			for i, f := range stmts {
				if err := p.Do(ctx, f); err != nil {
					t.Fatalf("statement %d: %v", i, err)
				}
			}
			for _, q := range append(tc.before, dealloc) {
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, q)
					return err
				}); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			for i, f := range stmts {
				if err := p.Do(ctx, f); err != nil {
					t.Errorf("statement %d, in a scope after %q: %v", i, dealloc, err)
				}
			}
		})
	}
}
