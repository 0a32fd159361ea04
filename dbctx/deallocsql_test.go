package dbctx_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// DISCARD ALL or DEALLOCATE written in SQL, in a unit that declares a
// parameter of PostgreSQL's (search_path), which dbscope applies with a
// statement it keeps prepared: the statements after it run, with the
// unit's settings, in every exec mode. In cache_statement mode they
// failed (SQLSTATE 26000, dbscope's statement and then pgx's deallocated,
// one more than the one run again allows).
func TestSettingsAfterDeallocateInSQL(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "DISCARD ALL and DEALLOCATE need one server session (transaction pooling refuses them)")
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol", "cache_describe", "describe_exec"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			rls(t, env)
			p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
			for _, q := range []string{"DISCARD ALL", "DEALLOCATE ALL", "DEALLOCATE ALL; SELECT 1/0"} {
				ctx := searchPath.With(tenant.With(context.Background(), "t1"), `"`+env.Schema()+`", public`)
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					var v seen
					if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
						return err
					}
					s.ExecContext(ctx, q) // the last fails: the deallocation stands
					for i := range 3 {
						if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
							return fmt.Errorf("statement %d after it: %w", i, err)
						}
						if v != (seen{"t1", 10}) {
							return fmt.Errorf("statement %d after it saw %+v", i, v)
						}
					}
					return nil
				})
				if err != nil {
					t.Errorf("%s: %v", q, err)
				}
			}
		})
	}
}
