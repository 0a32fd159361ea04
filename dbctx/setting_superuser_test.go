package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

var variableConflict = dbctx.NewSetting("plpgsql.variable_conflict")

// As NewSetting's doc says: plpgsql.variable_conflict, which plpgsql
// defines for superusers only, declared by a role that may not SET it,
// is a placeholder until the library loads; the statement that loads it
// (a PL/pgSQL function's first call) runs without the value, no error,
// and the statements after it fail with 42501. PostgreSQL's behaviour,
// not dbscope's: this test tells when a release of PostgreSQL changes it.
func TestSuperuserModuleSettingOfOtherRole(t *testing.T) {
	pgtest.SkipPooled(t, "a role of its own")
	env := pgtest.New(t)
	role := env.Role() + "_ns"
	admin := env.Admin()
	for _, q := range []string{
		"CREATE ROLE " + role + " LOGIN NOSUPERUSER",
		"GRANT USAGE ON SCHEMA " + env.Schema() + " TO " + role,
		"CREATE FUNCTION " + env.Schema() + ".vc() RETURNS text LANGUAGE plpgsql AS $$BEGIN RETURN current_setting('plpgsql.variable_conflict'); END$$",
		"GRANT EXECUTE ON FUNCTION " + env.Schema() + ".vc() TO " + role,
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	t.Cleanup(func() {
		admin.Exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '" + role + "'")
		admin.Exec("DROP OWNED BY " + role)
		admin.Exec("DROP ROLE " + role)
	})
	p := dbctx.New(openDSN(t, dsn(pgserver.WithUser(env.DirectDSN(t), role, ""))), &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	defer p.Close()
	var got []string
	for u := range 2 {
		err := p.Do(variableConflict.With(context.Background(), "use_column"), func(ctx context.Context, s *dbctx.Scope) error {
			for _, q := range []string{"SELECT current_setting('plpgsql.variable_conflict')", "SELECT " + env.Schema() + ".vc()", "SELECT current_setting('plpgsql.variable_conflict')"} {
				var v string
				if err := s.QueryRowContext(ctx, q).Scan(&v); err != nil {
					got = append(got, fmt.Sprintf("unit %d err %s", u, sqlStateOf(err)))
					continue
				}
				got = append(got, fmt.Sprintf("unit %d %s", u, v))
			}
			return nil
		})
		if err != nil {
			t.Log(err)
		}
	}
	want := []string{"unit 0 use_column", "unit 0 error", "unit 0 err 42501", "unit 1 err 42501", "unit 1 err 42501", "unit 1 err 42501"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func sqlStateOf(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return err.Error()
}
