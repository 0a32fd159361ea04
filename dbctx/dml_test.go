package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// dmlSchema creates, in env's schema, tables that run no code of their
// own (dmlw_plain, and dmlw_fk, whose foreign key only checks) and tables
// that do, each in a way that leaves session state where it runs: the
// setting app.leak.
func dmlSchema(t *testing.T, env *pgtest.Env) {
	t.Helper()
	s := env.Schema()
	for _, q := range []string{
		`CREATE FUNCTION ` + s + `.dmlw_leak() RETURNS text LANGUAGE sql AS $$ SELECT pg_catalog.set_config('app.leak', 'function', false) $$`,
		`CREATE FUNCTION ` + s + `.dmlw_leak_bool(int) RETURNS bool LANGUAGE sql AS $$ SELECT pg_catalog.set_config('app.leak', 'check', false) IS NOT NULL $$`,
		`CREATE FUNCTION ` + s + `.dmlw_leak_int(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT length(pg_catalog.set_config('app.leak', 'index', false)) + $1 $$`,
		`CREATE FUNCTION ` + s + `.dmlw_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.set_config('app.leak', 'trigger', false); RETURN NULL; END $$`,
		`CREATE TABLE ` + s + `.dmlw_plain (id bigserial PRIMARY KEY, n int NOT NULL CHECK (n >= 0),
			tenant text NOT NULL DEFAULT coalesce(current_setting('app.tenant', true), ''), at timestamptz DEFAULT now())`,
		`CREATE INDEX ON ` + s + `.dmlw_plain (n)`,
		`CREATE INDEX ON ` + s + `.dmlw_plain (lower(tenant)) WHERE n > 0`,
		`CREATE TABLE ` + s + `.dmlw_fk (id serial PRIMARY KEY, n int, plain bigint REFERENCES ` + s + `.dmlw_plain (id))`,
		`CREATE TABLE ` + s + `.dmlw_trig (id serial, n int)`,
		`CREATE TRIGGER dmlw_t AFTER INSERT OR UPDATE OR DELETE ON ` + s + `.dmlw_trig FOR EACH ROW EXECUTE FUNCTION ` + s + `.dmlw_trigger()`,
		`CREATE TABLE ` + s + `.dmlw_stmt_trig (id serial, n int)`,
		`CREATE TRIGGER dmlw_t AFTER INSERT OR UPDATE OR DELETE ON ` + s + `.dmlw_stmt_trig FOR EACH STATEMENT EXECUTE FUNCTION ` + s + `.dmlw_trigger()`,
		`CREATE TABLE ` + s + `.dmlw_def (id serial, n int, x text DEFAULT ` + s + `.dmlw_leak())`,
		`CREATE TABLE ` + s + `.dmlw_defb (id serial, n int, x text DEFAULT pg_catalog.set_config('app.leak', 'builtin', false))`,
		`CREATE TABLE ` + s + `.dmlw_chk (id serial, n int CHECK (` + s + `.dmlw_leak_bool(n)))`,
		`CREATE TABLE ` + s + `.dmlw_idx (id serial, n int)`,
		`CREATE INDEX ON ` + s + `.dmlw_idx (` + s + `.dmlw_leak_int(n))`,
		`CREATE TABLE ` + s + `.dmlw_rule (id serial, n int)`,
		`CREATE RULE dmlw_r AS ON INSERT TO ` + s + `.dmlw_rule DO ALSO SELECT pg_catalog.set_config('app.leak', 'rule', false)`,
		`CREATE TABLE ` + s + `.dmlw_parent (id int PRIMARY KEY, n int)`,
		`CREATE TABLE ` + s + `.dmlw_child (id serial, parent int REFERENCES ` + s + `.dmlw_parent (id) ON DELETE CASCADE)`,
		`CREATE TRIGGER dmlw_t AFTER DELETE ON ` + s + `.dmlw_child FOR EACH ROW EXECUTE FUNCTION ` + s + `.dmlw_trigger()`,
		`CREATE TABLE ` + s + `.dmlw_inh (id serial, n int)`,
		`CREATE TABLE ` + s + `.dmlw_inh_child (m int) INHERITS (` + s + `.dmlw_inh)`,
		`CREATE TRIGGER dmlw_t AFTER UPDATE ON ` + s + `.dmlw_inh_child FOR EACH ROW EXECUTE FUNCTION ` + s + `.dmlw_trigger()`,
		`INSERT INTO ` + s + `.dmlw_inh_child (n, m) VALUES (1, 1)`,
		`CREATE VIEW ` + s + `.dmlw_view AS SELECT id, n FROM ` + s + `.dmlw_trig`,
	} {
		mustExec(t, env.Admin(), q)
	}
}

// Whatever code a write's table runs (a row or statement trigger, a rule,
// a default, a check, an index expression, a cascade, a child table's
// trigger, a view's), and whichever way the write is sent, the next scope
// on the connection sees neither the setting that code set nor the
// write's sequence state: every write pays the whole reset. PostgreSQL is
// the judge.
func TestWriteResets(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets need consecutive scopes to share one server session")
	cases := []struct{ name, query string }{
		{"insert", "INSERT INTO dmlw_plain (n) VALUES (1)"},
		{"insert returning", "INSERT INTO dmlw_plain AS p (n) VALUES (2) RETURNING id, tenant"},
		{"upsert", "INSERT INTO dmlw_plain (id, n) VALUES (1, 3) ON CONFLICT (id) DO UPDATE SET n = excluded.n RETURNING id"},
		{"update", "UPDATE dmlw_plain SET n = n + 1 WHERE id = 1"},
		{"update only", "UPDATE ONLY dmlw_plain SET n = n + 1 WHERE id = 1 RETURNING nextval('dmlw_plain_id_seq')"},
		{"delete", "DELETE FROM dmlw_plain WHERE id < 0"},
		{"foreign key", "INSERT INTO dmlw_fk (n, plain) SELECT 1, min(id) FROM dmlw_plain"},
		{"delete referenced", "DELETE FROM dmlw_plain WHERE id = -1"},
		{"quoted", `INSERT INTO "dmlw_plain" (n) VALUES (4)`},
		{"trigger", "INSERT INTO dmlw_trig (n) VALUES (1)"},
		{"statement trigger", "DELETE FROM dmlw_stmt_trig WHERE false"},
		{"default", "INSERT INTO dmlw_def (n) VALUES (1)"},
		{"built-in default", "INSERT INTO dmlw_defb (n) VALUES (1)"},
		{"check", "INSERT INTO dmlw_chk (n) VALUES (1)"},
		{"index expression", "INSERT INTO dmlw_idx (n) VALUES (1)"},
		{"rule", "INSERT INTO dmlw_rule (n) VALUES (1)"},
		{"cascade", "DELETE FROM dmlw_parent WHERE id = 1"},
		{"inheritance", "UPDATE dmlw_inh SET n = n + 1"},
		{"view", "UPDATE dmlw_view SET n = 1"},
		{"function call", "INSERT INTO dmlw_plain (n, tenant) VALUES (5, dmlw_leak())"},
	}
	eachExecMode(t, func(t *testing.T, mode string, _ int) {
		env := newEnv(t)
		dmlSchema(t, env)
		p := onePoolInMode(t, env, mode, dbctx.Options{})
		ctx := context.Background()
		for i, tc := range cases {
			if tc.name == "cascade" {
				mustExec(t, env.Admin(), "INSERT INTO "+env.Schema()+".dmlw_parent VALUES (1, 1); INSERT INTO "+env.Schema()+".dmlw_child (parent) VALUES (1)")
			}
			if tc.name == "delete referenced" {
				mustExec(t, env.Admin(), "INSERT INTO "+env.Schema()+".dmlw_fk (n, plain) SELECT 1, min(id) FROM "+env.Schema()+".dmlw_plain")
			}
			via := i % 4
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return runWrite(ctx, s, tc.query, via)
			})
			if err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			before := p.Stats()
			err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var leak sql.NullString
				if err := s.QueryRowContext(ctx, "SELECT current_setting('app.leak', true)").Scan(&leak); err != nil {
					return err
				}
				if leak.String != "" {
					t.Errorf("%s (via %d): the next scope sees app.leak = %q", tc.name, via, leak.String)
				}
				checkNoLastval(ctx, t, s, fmt.Sprintf("%s (via %d)", tc.name, via))
				return nil
			})
			if err != nil {
				t.Fatalf("%s: probe: %v", tc.name, err)
			}
			after := p.Stats()
			if after.Resets != before.Resets+1 {
				t.Errorf("%s: %d resets, want 1", tc.name, after.Resets-before.Resets)
			}
		}
	})
}

// checkNoLastval fails t unless lastval() is undefined on s: no sequence
// state reached its scope.
func checkNoLastval(ctx context.Context, t *testing.T, s *dbctx.Scope, what string) {
	t.Helper()
	var n int64
	err := s.QueryRowContext(ctx, "SELECT lastval()").Scan(&n)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55000" {
		t.Errorf("%s: lastval() in the next scope: %d, %v; want it undefined", what, n, err)
	}
}

// runWrite runs query on s by one of four paths: database/sql's Exec and
// QueryRow, pgx's Exec and Query.
func runWrite(ctx context.Context, s *dbctx.Scope, query string, via int) error {
	returning := strings.Contains(query, "RETURNING")
	switch {
	case via == 0 || via == 1 && !returning:
		_, err := s.ExecContext(ctx, query)
		return err
	case via == 1:
		rows, err := s.QueryContext(ctx, query)
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		return errors.Join(rows.Err(), rows.Close())
	case via == 2:
		_, err := s.Exec(ctx, query)
		return err
	default:
		rows, err := s.Query(ctx, query)
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		rows.Close()
		return rows.Err()
	}
}

// With Options.PlainWrites, a write whose text is otherwise clean leaves
// only its sequence values: the next scope on the connection gets them
// discarded (lastval undefined), pays DISCARD SEQUENCES alone, and finds
// the settings it declares still applied (no set_config sent). What the
// text shows still counts: a call of a user function, a SET beside the
// write in a batch. And the schema's code is the user's word: a trigger
// that sets a setting leaks it, as the option says.
func TestPlainWrites(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets need consecutive scopes to share one server session")
	eachExecMode(t, func(t *testing.T, mode string, _ int) {
		env := newEnv(t)
		dmlSchema(t, env)
		p := onePoolInMode(t, env, mode, dbctx.Options{PlainWrites: true})
		ctx := tenant.With(context.Background(), "t1")
		probe := func(what string) (leak string) {
			t.Helper()
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var l, got sql.NullString
				if err := s.QueryRowContext(ctx, "SELECT current_setting('app.leak', true), current_setting('app.tenant', true)").Scan(&l, &got); err != nil {
					return err
				}
				if got.String != "t1" {
					t.Errorf("%s: the next scope's tenant is %q, want t1", what, got.String)
				}
				checkNoLastval(ctx, t, s, what)
				leak = l.String
				return nil
			})
			if err != nil {
				t.Fatalf("%s: probe: %v", what, err)
			}
			return leak
		}
		for i, tc := range []struct {
			name    string
			run     func(ctx context.Context, s *dbctx.Scope) error
			seqOnly bool
			leak    string
		}{
			{"insert", func(ctx context.Context, s *dbctx.Scope) error {
				return runWrite(ctx, s, "INSERT INTO dmlw_plain (n) VALUES (1) RETURNING id", 1)
			}, true, ""},
			{"update by pgx", func(ctx context.Context, s *dbctx.Scope) error {
				return runWrite(ctx, s, "UPDATE dmlw_plain SET n = n + 1 WHERE id = (SELECT max(id) FROM dmlw_plain) RETURNING nextval('dmlw_plain_id_seq')", 3)
			}, true, ""},
			{"insert, select", func(ctx context.Context, s *dbctx.Scope) error {
				if err := runWrite(ctx, s, "INSERT INTO dmlw_fk (n, plain) SELECT 1, max(id) FROM dmlw_plain", 2); err != nil {
					return err
				}
				var n int
				return s.QueryRowContext(ctx, "SELECT count(*) FROM dmlw_fk").Scan(&n)
			}, true, ""},
			{"a user function in the text", func(ctx context.Context, s *dbctx.Scope) error {
				return runWrite(ctx, s, "INSERT INTO dmlw_plain (n, tenant) VALUES (5, dmlw_leak())", 0)
			}, false, ""},
			{"a SET beside it in a batch", func(ctx context.Context, s *dbctx.Scope) error {
				b := &pgx.Batch{}
				b.Queue("SET app.leak = 'batch'")
				b.Queue("INSERT INTO dmlw_plain (n) VALUES (6)")
				return s.SendBatch(ctx, b).Close()
			}, false, ""},
			{"the user's word on a trigger", func(ctx context.Context, s *dbctx.Scope) error {
				return runWrite(ctx, s, "INSERT INTO dmlw_trig (n) VALUES (1)", 0)
			}, true, "trigger"},
		} {
			before := p.Stats()
			if err := p.Do(ctx, tc.run); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			mid := p.Stats()
			leak := probe(tc.name)
			after := p.Stats()
			if leak != tc.leak {
				t.Errorf("%s: the next scope sees app.leak = %q, want %q", tc.name, leak, tc.leak)
			}
			want := int64(0)
			if tc.seqOnly {
				want = 1
			}
			if got := after.SequenceResets - before.SequenceResets; got != want || after.Resets-before.Resets != 1 {
				t.Errorf("%s: %d resets, %d of sequences alone; want 1, %d", tc.name, after.Resets-before.Resets, got, want)
			}
			if tc.seqOnly && i > 0 && after.Settings != mid.Settings {
				t.Errorf("%s: the next scope sent its settings again (%d round trips): DISCARD SEQUENCES keeps them", tc.name, after.Settings-mid.Settings)
			}
			if tc.leak != "" {
				mustExec(t, env.Admin(), "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", env.AppName())
			}
		}
	})
}

// Under PlainWrites a kept connection that owes DISCARD SEQUENCES alone
// still carries its settings: a scope of the same tenant takes it over a
// newer one that owes the same reset for another tenant, and sends no
// set_config.
func TestPlainWritesKeepSettings(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets need consecutive scopes to share one server session")
	env := newEnv(t)
	dmlSchema(t, env)
	dsn, err := pgserver.WithParams(env.DSN(), "default_query_exec_mode", "cache_statement")
	if err != nil {
		t.Fatal(err)
	}
	db := openDSN(t, dsn)
	db.SetMaxOpenConns(2)
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 2, PlainWrites: true})
	t1 := tenant.With(context.Background(), "t1")
	t2 := tenant.With(context.Background(), "t2")
	write := func(ctx context.Context, s *dbctx.Scope) (int, error) {
		var pid int
		if _, err := s.ExecContext(ctx, "INSERT INTO dmlw_plain (n) VALUES (1)"); err != nil {
			return 0, err
		}
		return pid, s.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	}
	// t2 writes and holds its connection while t1 writes on the other;
	// t1's is given back first, so t2's is the newest kept.
	var pid1, pid2 int
	wrote, release := make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- p.Do(t2, func(ctx context.Context, s *dbctx.Scope) error {
			var err error
			pid2, err = write(ctx, s)
			close(wrote)
			<-release
			return err
		})
	}()
	<-wrote
	err = p.Do(t1, func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		pid1, err = write(ctx, s)
		return err
	})
	close(release)
	if err := errors.Join(err, <-done); err != nil {
		t.Fatal(err)
	}
	if pid1 == pid2 {
		t.Skip("both units ran on one connection: nothing to choose between")
	}
	before := p.Stats()
	var pid int
	var got string
	if err := p.Do(t1, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT pg_backend_pid(), current_setting('app.tenant')").Scan(&pid, &got)
	}); err != nil {
		t.Fatal(err)
	}
	after := p.Stats()
	if got != "t1" {
		t.Fatalf("tenant %q, want t1", got)
	}
	if pid != pid1 || after.Settings != before.Settings {
		t.Errorf("t1's next unit ran on backend %d (t1 wrote on %d, t2 on %d), sending set_config %d times; want t1's connection and none",
			pid, pid1, pid2, after.Settings-before.Settings)
	}
}
