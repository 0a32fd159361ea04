package dbctx_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

type parseSetting struct{ name, set, query string }

var parseSettings = []parseSetting{
	{"DateStyle", "SET DateStyle = 'ISO, DMY'", "SELECT '01/02/2020'::date::text"},
	{"TimeZone", "SET TIME ZONE 'Asia/Tokyo'", "SELECT extract(epoch FROM '2020-01-01 00:00'::timestamptz)::text"},
	{"transform_null_equals", "SET transform_null_equals = on", "SELECT count(*)::text FROM (VALUES (NULL::text), ('x')) AS n (v) WHERE v = NULL"},
	{"standard_conforming_strings", "SET standard_conforming_strings = off", `SELECT length('a\tb')::text`},
}

// freshAnswer asks a session of its own, after pre (if any), what query reads.
func freshAnswer(t *testing.T, db *sql.DB, pre, query string) string {
	t.Helper()
	ctx := context.Background()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.Raw(func(any) error { return driver.ErrBadConn }) // never reuse
		c.Close()
	}()
	if pre != "" {
		if _, err := c.ExecContext(ctx, pre); err != nil {
			t.Fatal(pre, err)
		}
	}
	var got string
	if err := c.QueryRowContext(ctx, query).Scan(&got); err != nil {
		t.Fatal(query, err)
	}
	return got
}

// The other direction of TestParseSettingsDoNotCarry: a clean scope runs a
// statement (pgx prepares it, cache_statement); the next scope on the
// connection sets a setting that changes how that text is read, and runs
// the same text: it reads what a fresh session that set the same reads,
// not the first scope's parse (pgx's statements are dropped after the
// SET).
func TestParseSettingAfterEarlierScope(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	admin := env.Open(t)
	for _, st := range parseSettings {
		t.Run(st.name, func(t *testing.T) {
			p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
			want := freshAnswer(t, admin, st.set, st.query)
			plain := freshAnswer(t, admin, "", st.query)
			if want == plain {
				t.Fatalf("proves nothing")
			}
			ctx := context.Background()
			var pid1, pid2 int
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var err error
				pid1, err = queryInt(ctx, s, "SELECT pg_backend_pid()")
				if err != nil {
					return err
				}
				var x string
				for range 2 {
					if err := s.QueryRowContext(ctx, st.query).Scan(&x); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			var got, gotLocal string
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var err error
				pid2, err = queryInt(ctx, s, "SELECT pg_backend_pid()")
				if err != nil {
					return err
				}
				if _, err := s.ExecContext(ctx, st.set); err != nil {
					return err
				}
				if err := s.QueryRowContext(ctx, st.query).Scan(&got); err != nil {
					return err
				}
				// And as a handler would, per transaction: SET LOCAL in Atomic.
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := s.ExecContext(ctx, strings.Replace(st.set, "SET ", "SET LOCAL ", 1)); err != nil {
						return err
					}
					return s.QueryRowContext(ctx, st.query).Scan(&gotLocal)
				})
			}); err != nil {
				t.Fatal(err)
			}
			if pid1 != pid2 {
				t.Fatal("another backend: proves nothing")
			}
			if got != want {
				t.Errorf("%s: after %q the scope reads %s where a fresh session that ran the same reads %s (%s is the previous scope's parse)", st.name, st.set, got, want, plain)
			}
			if gotLocal != want {
				t.Errorf("%s: after SET LOCAL in Atomic the scope reads %s where a fresh session reads %s", st.name, gotLocal, want)
			}
		})
	}
}

// The same with a temporary table that shadows the table a
// statement prepared by an earlier, clean scope names (the session's
// temporary schema exists already: an earlier scope made a temporary
// object, which the reset dropped).
func TestTempTableAfterEarlierScope(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	admin := env.Open(t)
	for _, q := range []string{"CREATE TABLE t (a text)", "INSERT INTO t VALUES ('public')"} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	const query = "SELECT a FROM t"
	p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
	ctx := context.Background()
	pids := map[int]bool{}
	units := []func(ctx context.Context, s *dbctx.Scope) error{
		exec("CREATE TEMP TABLE scratch (x int)"),
		func(ctx context.Context, s *dbctx.Scope) error {
			var x string
			for range 2 {
				if err := s.QueryRowContext(ctx, query).Scan(&x); err != nil {
					return err
				}
			}
			return nil
		},
	}
	for _, u := range units {
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			pid, err := queryInt(ctx, s, "SELECT pg_backend_pid()")
			pids[pid] = true
			if err != nil {
				return err
			}
			return u(ctx, s)
		}); err != nil {
			t.Fatal(err)
		}
	}
	var got string
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		pid, err := queryInt(ctx, s, "SELECT pg_backend_pid()")
		pids[pid] = true
		if err != nil {
			return err
		}
		if _, err := s.ExecContext(ctx, "CREATE TEMP TABLE t (a text)"); err != nil {
			return err
		}
		if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES ('mine')"); err != nil {
			return err
		}
		return s.QueryRowContext(ctx, query).Scan(&got)
	}); err != nil {
		t.Fatal(err)
	}
	if len(pids) != 1 {
		t.Fatal("another backend")
	}
	if got != "mine" {
		t.Errorf("after CREATE TEMP TABLE t the scope's %q reads %q (the earlier scope's prepared statement), where a fresh session reads its own temporary table's 'mine'", query, got)
	}
}

// A setting that changes how statements are read, set by code the
// classifier does not see and left in force (a DO block, a function, a
// procedure, a trigger, a SET through a handed-out *sql.Tx): the server
// reports the change, and the statements pgx prepared under it are
// dropped at the boundary; the next scope reads what a fresh session
// reads.
func TestParseSettingSetByCode(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	admin := env.Open(t)
	for _, q := range []string{
		`CREATE FUNCTION dmy() RETURNS void LANGUAGE sql AS $$SELECT set_config('DateStyle', 'ISO, DMY', false)$$`,
		`CREATE PROCEDURE dmy_proc() LANGUAGE sql AS $$SELECT set_config('DateStyle', 'ISO, DMY', false)$$`,
		`CREATE TABLE dmy_t (a int)`,
		`CREATE FUNCTION dmy_trg() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM set_config('DateStyle', 'ISO, DMY', false); RETURN NEW; END$$`,
		`CREATE TRIGGER dmy_trg BEFORE INSERT ON dmy_t FOR EACH ROW EXECUTE FUNCTION dmy_trg()`,
	} {
		if _, err := admin.Exec(q); err != nil {
			t.Fatal(q, err)
		}
	}
	const query = "SELECT '01/02/2020'::date::text"
	fresh := freshAnswer(t, admin, "", query)
	ways := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"DO": exec(`DO $$BEGIN PERFORM set_config('DateStyle', 'ISO, DMY', false); END$$`),
		"function": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT dmy()")
			return err
		},
		"CALL":    exec("CALL dmy_proc()"),
		"trigger": exec("INSERT INTO dmy_t VALUES (1)"),
		"BeginTx": func(ctx context.Context, s *dbctx.Scope) error {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "SET DateStyle = 'ISO, DMY'"); err != nil {
				return err
			}
			var x string
			for range 2 {
				if err := tx.QueryRowContext(ctx, query).Scan(&x); err != nil {
					return err
				}
			}
			return tx.Commit()
		},
	}
	for name, way := range ways {
		t.Run(name, func(t *testing.T) {
			p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
			var first string
			got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
				if err := way(ctx, s); err != nil {
					return err
				}
				for range 2 {
					if err := s.QueryRowContext(ctx, query).Scan(&first); err != nil {
						return err
					}
				}
				return nil
			}, query)
			switch {
			case first == fresh:
				t.Fatalf("the unit reads %s as a fresh session: proves nothing", first)
			case !same:
				t.Fatal("another backend: proves nothing")
			case got != fresh:
				t.Errorf("%s: the next scope reads %s where a fresh session reads %s", name, got, fresh)
			}
		})
	}
}
