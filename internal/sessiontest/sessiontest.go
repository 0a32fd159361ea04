// Package sessiontest asks PostgreSQL what a session holds, for the tests
// of session isolation: a probe of every kind of state one user of a
// connection could leave to the next, and a corpus of statements that
// leave some (hostile ones included: comments, strings that hide
// keywords, server-side code) and that leave none.
//
// The corpus needs the objects [Setup] creates in the test's schema, and
// refers to them unqualified: run it with that schema on the search_path
// (pgtest's DSN does that).
package sessiontest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// Querier is what the probe runs on: a *sql.DB, *sql.Conn, *sql.Tx or a
// dbctx scope.
type Querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Env is the objects of [Setup] in a schema.
type Env struct {
	Schema string
	Role   string // where SET ROLE and SET SESSION AUTHORIZATION go
}

// Setup creates in schema the tables, sequence, functions, procedure,
// trigger and role the corpus uses. db must be a superuser's. cleanup
// drops the role; dropping the schema drops the rest.
func Setup(ctx context.Context, db *sql.DB, schema string) (e *Env, cleanup func(), err error) {
	role := schema + "_r"
	q := `"` + schema + `"`
	r := `"` + role + `"`
	stmts := []string{
		"CREATE ROLE " + r + " NOLOGIN",
		"GRANT USAGE, CREATE ON SCHEMA " + q + " TO " + r,
		"CREATE TABLE " + q + ".t (id serial PRIMARY KEY, x int)",
		"CREATE TABLE " + q + ".items (id int PRIMARY KEY, name text)",
		"INSERT INTO " + q + ".items SELECT g, 'item-' || g FROM generate_series(1, 10) g",
		"CREATE SEQUENCE " + q + ".seq",
		// Sequence state: lastval(), and currval() of each sequence of the
		// schema, without their errors where nextval or setval never ran.
		"CREATE FUNCTION " + q + `.probe_sequences() RETURNS text LANGUAGE plpgsql AS $$
			DECLARE
				r text;
				s regclass;
			BEGIN
				BEGIN
					r := lastval()::text;
				EXCEPTION WHEN OTHERS THEN
					r := 'none';
				END;
				FOR s IN SELECT oid FROM pg_class WHERE relkind = 'S' AND relnamespace = ` + lit(schema) + `::regnamespace ORDER BY relname LOOP
					BEGIN
						r := r || ', ' || s::text || ' ' || currval(s);
					EXCEPTION WHEN OTHERS THEN
					END;
				END LOOP;
				RETURN r;
			END $$`,
		// The row-level-security way of setting a tenant.
		"CREATE FUNCTION " + q + `.set_tenant(t text) RETURNS text LANGUAGE sql AS
			$$ SELECT set_config('app.tenant', t, false) $$`,
		"CREATE FUNCTION " + q + `.set_tenant_plpgsql(t text) RETURNS void LANGUAGE plpgsql AS
			$$ BEGIN EXECUTE format('SET app.tenant = %L', t); END $$`,
		"CREATE FUNCTION " + q + `.set_tenant_rows(t text) RETURNS SETOF text LANGUAGE sql AS
			$$ SELECT set_config('app.tenant', t, false) $$`,
		"CREATE FUNCTION " + q + `.take_lock() RETURNS void LANGUAGE sql AS
			$$ SELECT pg_advisory_lock(4242) $$`,
		"CREATE FUNCTION " + q + `.make_temp() RETURNS void LANGUAGE plpgsql AS
			$$ BEGIN CREATE TEMP TABLE IF NOT EXISTS scratch (n int); END $$`,
		"CREATE FUNCTION " + q + `.do_listen() RETURNS void LANGUAGE plpgsql AS
			$$ BEGIN LISTEN dbscope_probe; END $$`,
		"CREATE FUNCTION " + q + `.do_prepare() RETURNS void LANGUAGE plpgsql AS
			$$ BEGIN EXECUTE 'PREPARE from_function AS SELECT 1'; END $$`,
		"CREATE FUNCTION " + q + `.do_nextval() RETURNS bigint LANGUAGE sql AS
			$$ SELECT nextval('` + q + `.seq') $$`,
		"CREATE PROCEDURE " + q + `.proc_set_tenant(t text) LANGUAGE plpgsql AS
			$$ BEGIN PERFORM set_config('app.tenant', t, false); END $$`,
		"CREATE TABLE " + q + ".trig_t (x int)",
		"CREATE FUNCTION " + q + `.trig_set() RETURNS trigger LANGUAGE plpgsql AS
			$$ BEGIN PERFORM set_config('app.tenant', 'from-trigger', false); RETURN NEW; END $$`,
		"CREATE TRIGGER trig_set BEFORE INSERT ON " + q + ".trig_t FOR EACH ROW EXECUTE FUNCTION " + q + ".trig_set()",
		"GRANT ALL ON ALL TABLES IN SCHEMA " + q + " TO " + r,
		"GRANT ALL ON ALL SEQUENCES IN SCHEMA " + q + " TO " + r,
	}
	cleanup = func() {
		// DROP OWNED revokes what the role was granted in this database.
		db.ExecContext(context.Background(), "DROP OWNED BY "+r)
		db.ExecContext(context.Background(), "DROP ROLE "+r)
	}
	for _, s := range stmts {
		if _, err := db.ExecContext(ctx, s); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("sessiontest: setup: %s: %w", s, err)
		}
	}
	return &Env{Schema: schema, Role: role}, cleanup, nil
}

// probeSQL reads, as one string, every kind of session state the corpus
// can leave but sequence state. A custom setting reads the same unset and
// reset: after a reset it exists with an empty value, where a fresh
// session has none (see dbctx.DefaultResetSQL). It calls only built-ins
// that leave no state, so a scope that runs it needs no reset.
const probeSQL = `SELECT concat_ws(E'\n',
	'settings: ' || (SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings
		WHERE name NOT IN ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable')),
	'users: ' || current_user || ' ' || session_user,
	'custom: ' || concat_ws(', ', nullif(current_setting('app.tenant', true), ''),
		nullif(current_setting('app.x', true), ''), nullif(current_setting('local.tenant', true), ''),
		nullif(current_setting('session.x', true), ''), nullif(current_setting('transaction.x', true), '')),
	'advisory locks: ' || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
	'temp objects: ' || (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())
		|| ' ' || (SELECT count(*) FROM pg_proc WHERE pronamespace = pg_my_temp_schema()),
	'listening: ' || coalesce((SELECT string_agg(c, ', ') FROM pg_listening_channels() c), ''),
	'cursors: ' || coalesce((SELECT string_agg(name || CASE WHEN is_holdable THEN ' (holdable)' ELSE '' END, ', ') FROM pg_cursors), ''),
	'prepared: ' || coalesce((SELECT string_agg(name, ', ') FROM pg_prepared_statements WHERE from_sql), '')%s)`

// sequencesSQL adds sequence state to probeSQL, through a function of the
// schema (lastval() and currval() fail where no nextval ran).
const sequencesSQL = `,
	'sequences: ' || %s.probe_sequences()`

// Probe returns what the session of q holds, as text to compare.
func (e *Env) Probe(ctx context.Context, q Querier) (string, error) {
	return probe(ctx, q, fmt.Sprintf(probeSQL, fmt.Sprintf(sequencesSQL, `"`+e.Schema+`"`)))
}

// ProbeClean is [Env.Probe] without sequence state, and classified clean
// by dbctx: it may run in the unit of work under test without making it
// reset its session.
func (e *Env) ProbeClean(ctx context.Context, q Querier) (string, error) {
	return probe(ctx, q, e.ProbeCleanSQL())
}

// ProbeCleanSQL is the query of [Env.ProbeClean], which returns one text.
func (e *Env) ProbeCleanSQL() string { return fmt.Sprintf(probeSQL, "") }

func probe(ctx context.Context, q Querier, sql string) (string, error) {
	var s string
	if err := q.QueryRowContext(ctx, sql).Scan(&s); err != nil {
		return "", fmt.Errorf("sessiontest: probe: %w", err)
	}
	return s, nil
}

// Diff describes how two probes differ, line by line.
func Diff(before, after string) string {
	b, a := strings.Split(before, "\n"), strings.Split(after, "\n")
	var out []string
	for i := range max(len(a), len(b)) {
		var x, y string
		if i < len(b) {
			x = b[i]
		}
		if i < len(a) {
			y = a[i]
		}
		if x != y {
			out = append(out, fmt.Sprintf("before %q, after %q", x, y))
		}
	}
	return strings.Join(out, "; ")
}

// A Case is a statement and what it leaves in the session it runs in.
type Case struct {
	Name   string
	SQL    string // %[1]s is the role of Setup
	Leaves Leaves
}

// Leaves is what a case leaves in the session.
type Leaves uint8

const (
	None     Leaves = iota
	State           // state ProbeClean sees
	Sequence        // only sequence state, which only Probe sees
)

// Statement returns the case's SQL in e.
func (e *Env) Statement(c Case) string {
	if !strings.Contains(c.SQL, "%[1]s") {
		return c.SQL
	}
	return fmt.Sprintf(c.SQL, e.Role) // a lower-case name: no quotes needed
}

// Cases is the corpus.
var Cases = []Case{
	// Settings, however the statement's text dresses them.
	{"set", "SET app.tenant = '42'", State},
	{"set after a comment", "/* tag */ SET app.tenant = '42'", State},
	{"sqlc name comment", "-- name: SetTenant :exec\nSET app.tenant = '42'", State},
	{"statement_timeout", "SET statement_timeout = '5s'", State},
	{"second statement", "SELECT 1; SET app.tenant = '42'", State},
	{"string then statement", "SELECT 'a''b'; SET app.x = '1'", State},
	{"E string then call", `SELECT E'\'', set_config('app.tenant', '42', false)`, State},
	{"dollar quote then call", `SELECT $x$ ' $x$, set_config('app.tenant', '42', false)`, State},
	{"set_config", "SELECT set_config('app.tenant', '42', false)", State},
	{"set_config qualified", "SELECT pg_catalog.set_config('app.tenant', '42', false)", State},
	{"set_config quoted", `SELECT "set_config"('app.tenant', '42', false)`, State},
	{"set_config escaped", `SELECT U&"\0073et_config"('app.tenant', '42', false)`, State},
	{"set_config after OPERATOR()", "SELECT 'a' OPERATOR(||) set_config('app.tenant', '42', false)", State},
	{"set_config in CTE", "WITH x AS (SELECT set_config('app.tenant', '42', false)) SELECT * FROM x", State},
	{"set_config in WHERE", "SELECT 1 FROM items WHERE set_config('app.tenant', '42', false) IS NOT NULL", State},
	{"set_config, param flag", "SELECT set_config('app.tenant', '42', 1 = 1 AND false)", State},
	{"search_path", "SET search_path = pg_catalog", State},
	{"session characteristics", "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", State},
	{"multi with commit", "BEGIN; SET app.tenant = '42'; COMMIT", State},
	// Server-side code.
	{"sql function", "SELECT set_tenant('42')", State},
	{"plpgsql function", "SELECT set_tenant_plpgsql('42')", State},
	{"function in FROM", "SELECT * FROM set_tenant_rows('42')", State},
	{"function in ORDER BY", "SELECT name FROM items ORDER BY set_tenant(name) LIMIT 1", State},
	{"DO block", "DO $$BEGIN PERFORM set_config('app.tenant', '42', false); END$$", State},
	{"procedure", "CALL proc_set_tenant('42')", State},
	{"trigger", "INSERT INTO trig_t VALUES (1)", State},
	// Roles.
	{"set role", "SET ROLE %[1]s", State},
	{"set_config role", "SELECT set_config('role', '%[1]s', false)", State},
	{"update pg_settings", "UPDATE pg_settings SET setting = '4242' WHERE name = 'work_mem'", State},
	{"session authorization", "SET SESSION AUTHORIZATION %[1]s", State},
	// Locks, temp tables, listeners, cursors, prepared statements, sequences.
	{"advisory lock", "SELECT pg_advisory_lock(42)", State},
	{"advisory lock after OPERATOR()", "SELECT 'a' OPERATOR(pg_catalog.||) pg_advisory_lock(42)::text", State},
	{"advisory lock in function", "SELECT take_lock()", State},
	{"advisory lock in attribute notation", "SELECT (42::bigint).pg_advisory_lock", State},
	// Not pg_try_advisory_lock: the units of a suite run in parallel on
	// one database, and a try fails while another holds the key.
	{"advisory lock in attribute notation, quoted", `SELECT (t.x)."pg_advisory_lock" FROM (SELECT 42::bigint AS x) t`, State},
	{"temp table", "CREATE TEMP TABLE scratch (n int)", State},
	{"temp table in function", "SELECT make_temp()", State},
	{"temp function", "CREATE FUNCTION pg_temp.tf() RETURNS int LANGUAGE sql AS 'SELECT 1'", State},
	{"listen", "LISTEN dbscope_probe", State},
	{"listen in function", "SELECT do_listen()", State},
	{"cursor with hold", "DECLARE c CURSOR WITH HOLD FOR SELECT 1", State},
	{"two prepares", "PREPARE p1 AS SELECT 1; PREPARE p2 AS SELECT 2", State},
	{"prepare in function", "SELECT do_prepare()", State},
	{"prepare in function named U& with UESCAPE", `SELECT U&"!0064o_prepare" UESCAPE '!'()`, State},
	{"prepare, deallocate, prepare", "PREPARE p1 AS SELECT 1; DEALLOCATE p1; PREPARE p1 AS SELECT 2", State},
	{"nextval", "SELECT nextval('seq')", Sequence},
	{"nextval in function", "SELECT do_nextval()", Sequence},
	{"insert with serial", "INSERT INTO t (x) VALUES (1)", Sequence},
	{"setval", "SELECT setval('seq', 5)", Sequence},
	{"nextval in attribute notation", "SELECT ('seq'::regclass).nextval", Sequence},

	// Keywords PostgreSQL takes as names.
	{"set local.tenant", "SET local.tenant = '7'", State},
	{"set session.x", "set SESSION.x TO '7'", State},
	{"set transaction.x", "SET transaction.x = '7'", State},
	{"prepare named transaction", "PREPARE transaction AS SELECT 1", State},
	{"cursor named hold", "DECLARE hold CURSOR WITH HOLD FOR SELECT 1", State},
	// Statements that run statements.
	{"explain analyze create temp table", "EXPLAIN ANALYZE CREATE TEMP TABLE scratch AS SELECT 1 AS n", State},
	{"explain (analyze) set_config", "EXPLAIN (costs off, Analyze TRUE) SELECT set_config('app.tenant', '42', false)", State},
	{"explain analyze execute", "PREPARE p1 AS SELECT set_config('app.tenant', '42', false); " +
		"EXPLAIN (ANALYZE) EXECUTE p1; DEALLOCATE p1", State},
	// The lexer's mode: the whole string is read with
	// standard_conforming_strings on, as it arrived; a string continued on
	// the next line keeps the escapes of its first line.
	{"standard_conforming_strings off in a transaction", "BEGIN; SET LOCAL standard_conforming_strings = off; " +
		`SELECT 'a\'; SELECT set_config('app.tenant', '42', false); --'` + "\n; COMMIT", State},
	{"E string continued", "SELECT E'a'\n'\\'', set_config('app.tenant', '42', false) -- '", State},
	// The temporary schema, quoted.
	{"quoted pg_temp", `CREATE TABLE "pg_temp".scratch (n int)`, State},

	// What leaves nothing, and must cost no reset.
	{"select", "SELECT name FROM items WHERE id = 1", None},
	{"sqlc select", "-- name: GetItem :one\nSELECT name FROM items WHERE id = 1", None},
	{"builtins", "SELECT count(*), max(id), lower('A'), now() FROM items", None},
	{"keyword in a string", "SELECT 'SET app.tenant = 1; SELECT set_config(a, b, false)'", None},
	{"keyword in a comment", "SELECT 1 -- ; SET app.tenant = '42'", None},
	{"local set_config", "SELECT set_config('app.tenant', '42', true)", None},
	{"set local in a transaction", "BEGIN; SET LOCAL app.tenant = '42'; COMMIT", None},
	{"transaction advisory lock", "SELECT pg_advisory_xact_lock(42)", None},
	{"for update", "SELECT name FROM items WHERE id = 1 FOR UPDATE", None},
	{"show", "SHOW search_path", None},
	{"explain", "EXPLAIN SELECT name FROM items WHERE id = 1", None},
	{"explain with options", "EXPLAIN (COSTS OFF, FORMAT JSON) SELECT name FROM items", None},
	{"explain analyze select", "EXPLAIN ANALYZE SELECT name FROM items WHERE id = 1", None},
	{"set local local.tenant", "SET LOCAL local.tenant = '7'", None},
}

// lit quotes s as a SQL string constant.
func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
