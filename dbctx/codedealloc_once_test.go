package dbctx_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

// A statement that the classifier reads as running no code of the
// user's (a SELECT from a view, a write under PlainWrites) but whose
// schema runs code that EXECUTEs a prepared statement gone from the
// session fails with the same SQLSTATE 26000, from the same routine
// (FetchPreparedStatement), as a Bind of a statement pgx kept prepared
// that was deallocated (see TestCodeDeallocatesDriverStatements): but
// it failed after that code's work, and what of it the rollback does
// not undo (a sequence's value, dblink, a file written) must not happen
// twice. It is not run again: PostgreSQL is asked how often the
// sequence moved.
func TestCodeMissingPreparedRunsOnce(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		for _, tc := range []struct {
			name, query string
			opts        dbctx.Options
		}{
			{"view", "SELECT n FROM %s.v WHERE n = $1", dbctx.Options{}},
			{"trigger, PlainWrites", "INSERT INTO %s.t VALUES ($1)", dbctx.Options{PlainWrites: true}},
		} {
			t.Run(mode+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				env := newEnv(t)
				sch := `"` + env.Schema() + `"`
				mustExec(t, env.Admin(), "CREATE SEQUENCE "+sch+".calls")
				mustExec(t, env.Admin(), "CREATE TABLE "+sch+".t (n int)")
				mustExec(t, env.Admin(), `CREATE FUNCTION `+sch+`.audit() RETURNS int LANGUAGE plpgsql AS
					$$BEGIN PERFORM nextval('`+env.Schema()+`.calls'); EXECUTE 'EXECUTE audit_plan'; RETURN 1; END$$`)
				mustExec(t, env.Admin(), `CREATE FUNCTION `+sch+`.audit_t() RETURNS trigger LANGUAGE plpgsql AS
					$$BEGIN PERFORM `+sch+`.audit(); RETURN NEW; END$$`)
				mustExec(t, env.Admin(), "CREATE TRIGGER audit BEFORE INSERT ON "+sch+".t FOR EACH ROW EXECUTE FUNCTION "+sch+".audit_t()")
				mustExec(t, env.Admin(), "CREATE VIEW "+sch+".v AS SELECT "+sch+".audit() AS n")
				mustExec(t, env.Admin(), "GRANT USAGE, SELECT ON SEQUENCE "+sch+".calls TO "+env.Role())
				p := onePoolInMode(t, env, mode, tc.opts)
				q := fmt.Sprintf(tc.query, sch)
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, q, 1)
					return err
				})
				if err == nil {
					t.Fatal("the statement succeeded; want its code's error (26000)")
				}
				var calls int
				if err := env.Admin().QueryRow("SELECT last_value FROM " + sch + ".calls").Scan(&calls); err != nil {
					t.Fatal(err)
				}
				if calls != 1 {
					t.Fatalf("the code ran %d times for one statement (%v): want 1", calls, err)
				}
			})
		}
	}
}
