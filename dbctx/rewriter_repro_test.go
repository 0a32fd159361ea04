package dbctx_test

import (
	"context"
	"os"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// Repro (DBSCOPE_REPRO=1), of the scope itself, not of isolation: a
// statement PREPAREd in SQL is gone after a statement of the same scope
// that changes how names resolve or text is read (SET search_path,
// DateStyle…, kindResolve): the drop before the scope's next statement
// is pgx's DeallocateAll, which sends DEALLOCATE ALL, so the unit's own
// PREPARE is deallocated with pgx's statements, and its EXECUTE fails
// with 26000 ("prepared statement "p" does not exist").
func TestReproPrepareThenResolve(t *testing.T) {
	if os.Getenv("DBSCOPE_REPRO") == "" {
		t.Skip("a repro of an open bug (set DBSCOPE_REPRO=1): the drop after kindResolve deallocates the unit's PREPAREd statements")
	}
	pgtest.SkipPooled(t, "needs one server session")
	env := newEnv(t)
	p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		for _, q := range []string{"PREPARE p AS SELECT 1", "SET search_path = public", "EXECUTE p"} {
			if _, err := s.ExecContext(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("in the same scope: %v", err)
	}
}

// Repro (DBSCOPE_REPRO=1): code the text does not show (a DO block, a
// function) that deallocates a statement pgx prepared (EXECUTE
// 'DEALLOCATE stmtcache_…') leaves pgx's cache naming what the session
// no longer has: the sweep that follows code deallocates what was
// PREPAREd in SQL, but nothing checks that pgx's statements are still
// there, and the next scope's use of it fails with 26000. The text's own
// DEALLOCATE of such a name costs the connection (driverStatement).
func TestReproCodeDeallocatesDriverStatement(t *testing.T) {
	if os.Getenv("DBSCOPE_REPRO") == "" {
		t.Skip("a repro of an open class (set DBSCOPE_REPRO=1): code that deallocates pgx's statements")
	}
	pgtest.SkipPooled(t, "needs one server session")
	env := newEnv(t)
	p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
	ctx := context.Background()
	const cached = "SELECT $1::int + 1"
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var n int
		if err := s.QueryRowContext(ctx, cached, 1).Scan(&n); err != nil {
			return err
		}
		_, err := s.ExecContext(ctx, `DO $$DECLARE n text; BEGIN FOR n IN SELECT name FROM pg_prepared_statements WHERE NOT from_sql AND name LIKE 'stmtcache%' LOOP EXECUTE format('DEALLOCATE %I', n); END LOOP; END$$`)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var n int
		if err := s.QueryRowContext(ctx, "SELECT 41").Scan(&n); err != nil { // takes the reset
			return err
		}
		return s.QueryRowContext(ctx, cached, 1).Scan(&n)
	})
	if err != nil {
		t.Errorf("the next scope: %v", err)
	}
}
