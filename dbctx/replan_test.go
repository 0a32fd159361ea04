package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A statement prepared (or described) while a scope had another search_path,
// or a temporary table shadowing the one the next scope reads, is not
// what the next scope on the connection runs: it gets its own table's
// rows, inside a transaction too, in every exec mode.
func TestNameResolutionDoesNotCarry(t *testing.T) {
	t.Parallel()
	changes := map[string]string{
		"SET":        "SET search_path TO OTHER, public",
		"set_config": "SELECT set_config('search_path', 'OTHER, public', false)",
		"SET LOCAL":  "SET LOCAL search_path TO OTHER, public",
		"temp table": "CREATE TEMP TABLE t (a int, c int, d int)",
	}
	const query = "SELECT * FROM t WHERE $1::int > 0"
	for _, mode := range allModes {
		for name, change := range changes {
			t.Run(mode+"/"+name, func(t *testing.T) {
				t.Parallel()
				env := pgtest.New(t)
				admin := env.Open(t)
				other := env.Schema() + "_other"
				for _, q := range []string{
					"CREATE TABLE t (a text, b int)", "INSERT INTO t VALUES ('mine', 2)",
					"CREATE SCHEMA " + other, "CREATE TABLE " + other + ".t (a int)", "INSERT INTO " + other + ".t VALUES (1)",
				} {
					if _, err := admin.Exec(q); err != nil {
						t.Fatal(q, err)
					}
				}
				t.Cleanup(func() { admin.Exec("DROP SCHEMA " + other + " CASCADE") })
				p := onePoolInMode(t, env, mode, dbctx.Options{})
				ctx := context.Background()
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						if _, err := s.ExecContext(ctx, strings.ReplaceAll(change, "OTHER", other)); err != nil {
							return err
						}
						for range 2 { // pgx prepares a statement at its second run in some modes
							rows, err := s.QueryContext(ctx, query, 1)
							if err != nil {
								return err
							}
							rows.Close()
						}
						return nil
					})
				})
				if err != nil {
					t.Fatal(err)
				}
				for _, how := range []string{"alone", "in a transaction", "pgx"} {
					err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
						var a string
						var b int
						var err error
						switch how {
						case "alone":
							err = s.QueryRowContext(ctx, query, 1).Scan(&a, &b)
						case "in a transaction":
							err = dbctx.Atomic(ctx, func(ctx context.Context) error {
								return s.QueryRowContext(ctx, query, 1).Scan(&a, &b)
							})
						case "pgx":
							err = s.QueryRow(ctx, query, 1).Scan(&a, &b)
						}
						if err == nil && (a != "mine" || b != 2) {
							err = fmt.Errorf("read (%q, %d), want the scope's own table's row", a, b)
						}
						return err
					})
					if err != nil {
						t.Errorf("%s: %v", how, err)
					}
				}
			})
		}
	}
}

// A statement prepared while a scope had a setting that changes how
// PostgreSQL reads a statement's text or its constants (TimeZone,
// DateStyle, transform_null_equals, standard_conforming_strings) runs in
// the next scope on the connection as a fresh session reads it, in every
// exec mode: whether the scope set it for its session or for its
// transaction (SET LOCAL and set_config(…, true) in Atomic), by SET or
// set_config, alone or in a string of several statements. (The reset
// puts the setting back; a statement pgx kept prepared would keep what
// was parsed under it.)
func TestParseSettingsDoNotCarry(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	admin := env.Open(t)
	settings := []struct{ name, value, set, query string }{
		{"TimeZone", "Asia/Tokyo", "SET TIME ZONE 'Asia/Tokyo'", "SELECT extract(epoch FROM '2020-01-01 00:00'::timestamptz)::text"},
		{"DateStyle", "ISO, DMY", "SET DateStyle = 'ISO, DMY'", "SELECT '01/02/2020'::date::text"},
		{"transform_null_equals", "on", "SET transform_null_equals = on", "SELECT count(*)::text FROM (VALUES (NULL::text), ('x')) AS n (v) WHERE v = NULL"},
		{"standard_conforming_strings", "off", "SET standard_conforming_strings = off", `SELECT length('a\tb')::text`},
	}
	for _, st := range settings {
		var fresh string
		if err := admin.QueryRow(st.query).Scan(&fresh); err != nil {
			t.Fatal(err)
		}
		local := strings.Replace(st.set, "SET ", "SET LOCAL ", 1)
		ways := []struct {
			name   string
			atomic bool
			set    string
		}{
			{"SET", false, st.set},
			{"SET LOCAL in Atomic", true, local},
			{"set_config", false, fmt.Sprintf("SELECT set_config('%s', '%s', false)", st.name, st.value)},
			{"set_config in Atomic", true, fmt.Sprintf("SELECT set_config('%s', '%s', true)", st.name, st.value)},
			{"several statements", false, "SELECT 1; " + st.set},
			{"several statements in Atomic", true, "SELECT 1; " + local},
		}
		for _, mode := range allModes {
			for _, way := range ways {
				t.Run(st.name+"/"+mode+"/"+way.name, func(t *testing.T) {
					if mode == "simple_protocol" && st.name == "standard_conforming_strings" {
						t.Skip("pgx's simple protocol runs nothing under standard_conforming_strings off (and prepares nothing)")
					}
					p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
					var first string
					unit := func(ctx context.Context, s *dbctx.Scope) error {
						if _, err := s.ExecContext(ctx, way.set); err != nil {
							return err
						}
						for range 2 { // pgx prepares a statement at its second run in some modes
							if err := s.QueryRowContext(ctx, st.query).Scan(&first); err != nil {
								return err
							}
						}
						return nil
					}
					got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
						if way.atomic {
							return dbctx.Atomic(ctx, func(ctx context.Context) error { return unit(ctx, s) })
						}
						return unit(ctx, s)
					}, st.query)
					switch {
					case first == fresh:
						t.Fatalf("the unit reads %s under %q, as a fresh session does: the test proves nothing", first, way.set)
					case !same:
						t.Fatalf("the next scope ran on another backend: the test proves nothing")
					case got != fresh:
						t.Errorf("the next scope reads %s where a fresh session reads %s: the statement ran as parsed under %q", got, fresh, way.set)
					}
				})
			}
		}
	}
}

// A statement pgx keeps prepared whose table another session altered
// since (a migration) runs again, prepared anew, rather than fail with
// "cached plan must not change result type": outside a transaction,
// where PostgreSQL refused it before it ran.
func TestSchemaChangeReplans(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			admin := env.Open(t)
			if _, err := admin.Exec("CREATE TABLE t (a int); INSERT INTO t VALUES (1)"); err != nil {
				t.Fatal(err)
			}
			p := onePoolInMode(t, env, mode, dbctx.Options{})
			ctx := context.Background()
			const query = "SELECT * FROM t WHERE $1::int > 0"
			for i, alter := range []string{"", "ALTER TABLE t ADD COLUMN b int DEFAULT 2", "ALTER TABLE t ADD COLUMN c text DEFAULT 'x'",
				"ALTER TABLE t DROP COLUMN b"} {
				want := []int{1, 2, 3, 2}[i]
				if alter != "" {
					if _, err := admin.Exec(alter); err != nil {
						t.Fatal(err)
					}
				}
				for _, api := range []string{"database/sql", "pgx"} {
					err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
						var cols int
						if api == "pgx" {
							rows, err := s.Query(ctx, query, 1)
							if err != nil {
								return err
							}
							defer rows.Close()
							cols = len(rows.FieldDescriptions())
							for rows.Next() {
							}
							return cmpCols(rows.Err(), cols, want)
						}
						rows, err := s.QueryContext(ctx, query, 1)
						if err != nil {
							return err
						}
						defer rows.Close()
						names, err := rows.Columns()
						if err != nil {
							return err
						}
						for rows.Next() {
						}
						return cmpCols(rows.Err(), len(names), want)
					})
					if err != nil {
						t.Errorf("%s after %q: %v", api, alter, err)
					}
				}
			}
		})
	}
}

func cmpCols(err error, got, want int) error {
	if err == nil && got != want {
		err = fmt.Errorf("%d columns, want %d", got, want)
	}
	return err
}

// The retry of a statement whose result type changed is not for what may
// commit partway (a string of several statements, DO, CALL): PostgreSQL
// counts the rows its work inserted, once.
func TestReplanNotForWhatCommitsPartway(t *testing.T) {
	t.Parallel()
	for name, q := range map[string]string{
		"string": "INSERT INTO log VALUES (1); COMMIT; EXECUTE p",
		"DO":     "DO $$BEGIN INSERT INTO log VALUES (1); COMMIT; EXECUTE 'EXECUTE p'; END$$",
		"CALL":   "CALL proc()",
		// A function's sequence value is taken for good before its
		// statement is refused.
		"function": "SELECT f()",
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			pgtest.SkipPooled(t, "PREPARE and EXECUTE need one server session")
			env := pgtest.New(t)
			admin := env.Open(t)
			for _, q := range []string{"CREATE TABLE t (a int)", "INSERT INTO t VALUES (1)", "CREATE TABLE log (n int)",
				"CREATE PROCEDURE proc() LANGUAGE plpgsql AS $$BEGIN INSERT INTO log VALUES (1); COMMIT; EXECUTE 'EXECUTE p'; END$$",
				"CREATE SEQUENCE s",
				"CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$BEGIN PERFORM nextval('s'); EXECUTE 'EXECUTE p'; RETURN 1; END$$"} {
				if _, err := admin.Exec(q); err != nil {
					t.Fatal(q, err)
				}
			}
			p := onePoolInMode(t, env, "cache_statement", dbctx.Options{})
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := s.ExecContext(ctx, "PREPARE p AS SELECT * FROM t"); err != nil {
					return err
				}
				if _, err := admin.Exec("ALTER TABLE t ADD COLUMN b int"); err != nil {
					return err
				}
				if _, err := s.ExecContext(ctx, q); err == nil {
					return errors.New("EXECUTE p of a changed table did not fail")
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			check := "SELECT count(*) FROM log"
			if name == "function" {
				check = "SELECT last_value FROM s"
			}
			var n int
			if err := admin.QueryRow(check).Scan(&n); err != nil || n != 1 {
				t.Errorf("%s: %d (%v), want 1: the work ran again after it was done", check, n, err)
			}
		})
	}
}

var searchPath = dbctx.NewSetting("search_path")

// A statement not yet described on the connection is described under the
// search_path the unit declares (a schema per tenant), not the role's:
// the tenant's table, of which the default schema has none, is found, in
// every exec mode, through both interfaces.
func TestDeclaredSearchPathDescribed(t *testing.T) {
	t.Parallel()
	for _, mode := range allModes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			pgtest.SkipPooled(t, "a search_path declared outside a transaction needs one server session (behind a pooler: TransactionPooling, TestSettingsBehindPgBouncer)")
			env := pgtest.New(t)
			admin := env.Open(t)
			tenantA := env.Schema() + "_a"
			for _, q := range []string{"CREATE SCHEMA " + tenantA, "CREATE TABLE " + tenantA + ".items (id int, name text)",
				"INSERT INTO " + tenantA + ".items VALUES (1, 'a1')"} {
				if _, err := admin.Exec(q); err != nil {
					t.Fatal(q, err)
				}
			}
			t.Cleanup(func() { admin.Exec("DROP SCHEMA " + tenantA + " CASCADE") })
			p := onePoolInMode(t, env, mode, dbctx.Options{})
			ctx := searchPath.With(context.Background(), tenantA)
			for _, api := range []string{"database/sql", "pgx", "database/sql in a transaction"} {
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					var name string
					var err error
					switch api {
					case "pgx":
						err = s.QueryRow(ctx, "SELECT name FROM items WHERE id = $1", 1).Scan(&name)
					case "database/sql":
						err = s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", 1).Scan(&name)
					default:
						err = dbctx.Atomic(ctx, func(ctx context.Context) error {
							return s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1 AND true", 1).Scan(&name)
						})
					}
					if err == nil && name != "a1" {
						err = fmt.Errorf("read %q, want a1", name)
					}
					return err
				})
				if err != nil {
					t.Errorf("%s: %v", api, err)
				}
			}
		})
	}
}

// The same for a PL/pgSQL function, whose plans PostgreSQL keeps per
// session: a scope that set DateStyle or TimeZone and called it leaves no
// plan read under them to the next scope (DISCARD PLANS at its boundary).
func TestParseSettingsDoNotCarryIntoFunctions(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	admin := env.Open(t)
	for _, f := range []string{
		`CREATE FUNCTION day() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN '01/02/2020'::date::text; END $$`,
		`CREATE FUNCTION epoch() RETURNS text LANGUAGE plpgsql AS $$ BEGIN RETURN extract(epoch FROM '2020-01-01 00:00'::timestamptz)::text; END $$`,
	} {
		if _, err := admin.Exec(f); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ set, query string }{
		{"SET DateStyle = 'ISO, DMY'", "SELECT day()"},
		{"SET TIME ZONE 'Asia/Tokyo'", "SELECT epoch()"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			var fresh string
			if err := admin.QueryRow(tc.query).Scan(&fresh); err != nil {
				t.Fatal(err)
			}
			p := onePoolInMode(t, env, "exec", dbctx.Options{Logger: quiet()})
			var first string
			got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := s.ExecContext(ctx, tc.set); err != nil {
					return err
				}
				return s.QueryRowContext(ctx, tc.query).Scan(&first)
			}, tc.query)
			switch {
			case first == fresh:
				t.Fatalf("the unit reads %s under %q, as a fresh session does: the test proves nothing", first, tc.set)
			case !same:
				t.Fatalf("the next scope ran on another backend: the test proves nothing")
			case got != fresh:
				t.Errorf("the next scope reads %s where a fresh session reads %s: the function's plan was read under %q", got, fresh, tc.set)
			}
		})
	}
}
