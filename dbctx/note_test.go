package dbctx

import (
	"fmt"
	"strings"
	"testing"
)

// The reset tests check against PostgreSQL that dirty sessions are reset,
// and TestClassifyOracle that what this calls clean leaves the session as
// it was; this one pins the classification itself, including what must
// stay clean so that ordinary statements cost no reset round trip.
func TestClassify(t *testing.T) {
	const (
		S = kindState
		B = kindBegin
		O = kindOnce
		P = kindPoison
		C = kindCode
		X = kindSession // with S: set in the session, visibly
		A = kindAlone
		Q = kindSeqRead
		L = kindTxSet   // clean, but sets a setting for the rest of the transaction
		D = kindDML     // with S | C: a write of one named table, otherwise clean
		T = kindUtility // S | O | C
		U = kindUnknown // S | O | C | A
	)
	for _, tc := range []struct {
		query string
		want  queryKind
	}{
		// Clean: what ordinary requests run.
		{"SELECT 1", 0},
		{"", 0},
		{";", 0},
		{"SELECT name FROM items WHERE id = $1", 0},
		{"SELECT name FROM items WHERE id = $1;", 0},
		{"select temperature, attempts from settings", 0},
		{"-- name: GetItem :one\nSELECT name FROM items WHERE id = $1", 0},
		{"/* a /* nested */ comment */ SELECT 1", 0},
		{"SELECT count(*), max(id), coalesce(sum(n), 0), now(), lower($1) FROM t", 0},
		{"SELECT * FROM t WHERE id = ANY($1) AND EXISTS (SELECT 1) AND x IN (1, 2)", 0},
		{"SELECT * FROM unnest($1::int[]) AS u(id) JOIN t ON t.id = u.id", 0},
		{"SELECT row_number() OVER (PARTITION BY a), count(*) FILTER (WHERE b) FROM t GROUP BY a", 0},
		{"SELECT * FROM a LEFT JOIN (SELECT 1 AS x) b ON true JOIN (c JOIN d USING (id)) ON true", 0},
		{"SELECT x::numeric(10,2), CAST(y AS varchar(3)), z::character varying(4) FROM t", 0},
		{"SELECT pg_catalog.lower(x), \"lower\"(y) FROM t", 0},
		{"SELECT name FROM items, pg_sleep($2) WHERE id = $1", 0},
		{"SELECT * FROM t WHERE id = $1 FOR UPDATE", 0},
		{"SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED", 0},
		{"SELECT set_config('app.tenant', $1, true)", L},
		{"SELECT set_config('app.tenant', (SELECT lower($1)), 'true')", L},
		{"SELECT pg_advisory_xact_lock(1)", 0},
		{"WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x", 0},
		{"VALUES (1), (2)", 0},
		{"TABLE t", 0},
		{"(SELECT 1) UNION (SELECT 2)", 0},
		{"SELECT 'SET x = 1; select set_config(a, b, false)'", 0},
		{"SELECT $$ SET x = 1 $$, $t$ set_config( $t$", 0},
		{"SELECT E'\\' set_config(', 'x'", 0},
		{"SHOW search_path", 0},
		{"SET LOCAL app.tenant = '42'", L},
		{"SET LOCAL local.tenant = '42'", L},
		{"SET LOCAL session.x TO '42'", L},
		{"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0},
		{"set constraints all deferred", 0},
		{"DECLARE c CURSOR FOR SELECT 1", 0},
		{"DECLARE hold CURSOR FOR SELECT 1", 0},
		{"DECLARE c CURSOR WITHOUT HOLD FOR WITH hold AS (SELECT 1) SELECT * FROM hold", 0},
		{"FETCH 10 FROM c", 0},
		{"NOTIFY ch, 'x'", 0},
		{"LOCK TABLE t IN SHARE MODE", 0},
		{"begin", B | A},
		{"START TRANSACTION", B | A},
		{"BEGIN ISOLATION LEVEL REPEATABLE READ", B | A},
		{"COMMIT", O | A},
		{"ROLLBACK", O | A},
		{"SAVEPOINT a", O | A},
		{"ROLLBACK TO SAVEPOINT a", O | A},
		{"PREPARE TRANSACTION 'x'", O | A},
		{"COMMIT PREPARED 'x'", O | A},
		// EXPLAIN plans; with ANALYZE it runs its statement.
		{"EXPLAIN SELECT 1", 0},
		{"EXPLAIN (COSTS OFF, FORMAT JSON) INSERT INTO t VALUES (1)", 0},
		{"EXPLAIN (ANALYZE false, COSTS off) DELETE FROM t", 0},
		{"explain (analyse 0) UPDATE t SET x = 1", 0},
		{"EXPLAIN ( \"ANALYZE\" ) CREATE TEMP TABLE t AS SELECT 1", 0},
		{"EXPLAIN (SELECT 1) UNION (SELECT 2)", 0},
		{"EXPLAIN VERBOSE (SELECT 1)", 0},
		{"EXPLAIN CREATE TEMP TABLE t AS SELECT 1", 0},
		{"EXPLAIN EXECUTE q(1)", 0},
		{"EXPLAIN SELECT f(1)", S | C}, // planning may fold it
		{"EXPLAIN ANALYZE SELECT 1", 0},
		{"EXPLAIN ANALYZE INSERT INTO t VALUES (1)", S | C},
		{"EXPLAIN ANALYSE VERBOSE DELETE FROM t", S | C},
		{"EXPLAIN (ANALYZE) CREATE TEMP TABLE t AS SELECT 1", T | X},
		{"EXPLAIN (costs off, Analyze TRUE) CREATE TEMP TABLE t AS SELECT 1", T | X},
		{"EXPLAIN (ANALYZE on) SELECT 1 INTO TEMP t", S | X},
		{"EXPLAIN (ANALYZE '1') SELECT set_config('a.b', 'c', false)", S | X},
		{"EXPLAIN (ANALYZE 1) EXECUTE q", S | X | C},
		{"EXPLAIN (\"analyze\") EXECUTE q", S | X | C},
		{"EXPLAIN (ANALYZE false, ANALYZE) EXECUTE q", S | X | C},
		{"EXPLAIN (U&\"an\\0061lyze\") EXECUTE q", S | X | C},
		{"EXPLAIN ANALYZE (SELECT 1 INTO TEMP t)", S | X},
		{"EXPLAIN ANALYZE DECLARE c CURSOR WITH HOLD FOR SELECT 1", S | X},

		// Session state, by statement.
		{"SET search_path = x", S | X},
		{"SET local.tenant = '7'", S | X},
		{"SET LOCAL.tenant = '7'", S | X},
		{"set local /* c */ . tenant to '7'", S | X},
		{"SET session.x = 1", S | X},
		{"SET transaction.x = 1", S | X},
		{"SET constraints.x TO 1", S | X},
		{"SET SESSION local.x = 1", S | X},
		{"SET \"local\" = 1", S | X},
		{"set session authorization nobody", S | X},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", S | X},
		{"SET ROLE r", S | X},
		{"reset all", S | X},
		{"LISTEN ch", S | X},
		{"UNLISTEN *", S | X},
		{"PREPARE q1 AS SELECT 1", S | C | X},
		{"PREPARE transaction AS SELECT 1", S | C | X},
		{"PREPARE TRANSACTION (int) AS SELECT $1", S | C | X},
		{"EXECUTE q1", S | C | X},
		{"DEALLOCATE q1", S | X},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", S | X},
		{"DECLARE hold BINARY NO SCROLL CURSOR WITH /* c */ HOLD FOR SELECT 1", S | X},
		{"DISCARD TEMP", S | X},
		{"create temp table t (x int)", T | X},
		{"CREATE TEMP TABLE t (x int) ON COMMIT DROP", T},
		{"CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", T},
		{"CREATE TEMPORARY TABLE t (x int)", T | X},
		{"CREATE LOCAL TEMP TABLE t (x int)", T | X},
		{"CREATE OR REPLACE TEMP VIEW v AS SELECT 1", T | X},
		{"CREATE TEMP TABLE t (x int, on int, commit int, drop int)", T | X},
		{"CREATE TABLE t (temp int)", T},
		{"CREATE TABLE pg_temp.t (x int)", T | X},
		{"CREATE TABLE \"pg_temp\".t (x int)", T | X},
		{"CREATE TABLE PG_TEMP_3.t (x int)", T | X},
		{"CREATE TABLE pg_toast_temp_3.t (x int)", T | X},
		{"SELECT set_config('search_path', 'pg_toast_temp_3', true)", S | X | L},
		{"CREATE TABLE U&\"pg\\005ftemp\".t (x int)", T | X},
		{"CREATE TABLE t AS EXECUTE q", T},
		{"SELECT 1 INTO TEMP t", S | X},
		{"SELECT 1 INTO LOCAL TEMPORARY TABLE t", S | X},
		{"SELECT 1 INTO t", S},
		{"INSERT INTO t VALUES (1)", S | C | D},
		{"UPDATE t SET x = 1", S | C | D},
		{"DELETE FROM t", S | C | D},
		// Writes whose text is otherwise clean (kindDML): the catalog is
		// asked about the table after them (dml.go).
		{"INSERT INTO t (a, b) VALUES ($1, lower($2)) RETURNING id", S | C | D},
		{`INSERT INTO s."T" (a) SELECT a FROM u WHERE b IN (1, 2)`, S | C | D},
		{"INSERT INTO t AS x (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = x.a + 1", S | C | D},
		{"INSERT INTO t (id) VALUES (nextval('s'))", S | C | D},
		{"UPDATE ONLY t SET a = 1 FROM u WHERE t.id = u.id", S | C | D},
		{"DELETE FROM t USING u WHERE t.id = u.id RETURNING t.id", S | C | D},
		// Not: a function of the user's, another write, several
		// statements, a CTE, MERGE, EXPLAIN ANALYZE, pg_temp.
		{"INSERT INTO t (a) VALUES (f(1))", S | C},
		{"INSERT INTO t (a) SELECT set_config('x', 'y', false)", S | C | X},
		{"UPDATE t SET a = (SELECT pg_advisory_lock(1))", S | C | X},
		{"WITH d AS (DELETE FROM u RETURNING a) INSERT INTO t SELECT a FROM d", S | C},
		{"INSERT INTO t VALUES (1); INSERT INTO t VALUES (2)", S | C | O | A},
		{"MERGE INTO t USING u ON t.id = u.id WHEN MATCHED THEN DELETE", S | C},
		{"EXPLAIN ANALYZE INSERT INTO t VALUES (1)", S | C},
		{"INSERT INTO pg_temp.t VALUES (1)", S | C | X},
		{"INSERT INTO t (a) VALUES ((SELECT a FROM u FOR UPDATE))", S | C | D},
		{"UPDATE t SET (a, b) = (1, 2)", S | C | D},
		{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", S | C},
		{"SELECT * FROM pg_temp.t", S | X},
		{"SET LOCAL search_path = 'pg_temp, public'", S | X | L},
		// … by function.
		{"select set_config('a.b', 'c', false)", S | X},
		{"SELECT set_config('a.b', 'c', $3)", S | X},
		{"SELECT pg_catalog.set_config('a.b', 'c', false)", S | X},
		{"SELECT set_config('a.b', 'c', 'tr'\n'ue')", L}, // a string continued on the next line is read whole
		{"SELECT set_config('a.b', 'c', 'fal'\n'se')", S | X},
		{"SELECT set_config('a.b', 'c', E'tr\\x75e')", S | X}, // escapes: not known to be true
		{"SELECT pg_advisory_lock(1)", S | X},
		{"SELECT pg_try_ADVISORY_LOCK(1)", S | X},
		{"SELECT nextval('s')", S},
		{"SELECT currval('s'), lastval()", Q},
		{"SELECT app.set_tenant($1)", S | C},
		{"SELECT set_tenant($1)", S | C},
		{"SELECT * FROM t WHERE x = f(1)", S | C},
		{"SELECT * FROM generate_series(1, 3) g, my_srf(g)", S | C},
		{"SELECT \"Lower\"(x) FROM t", S | C},
		{"SELECT U&\"\\0073et_config\"('a', 'b', false)", S | C | X | P}, // its name not decoded: it may be setseed
		{"SELECT join(1)", S | C},
		{"SELECT x FROM t ORDER BY score(x)", S | C},
		{"SELECT public.lower(x) FROM t", S | C},
		{"SELECT lower /* c */ (x), f\n(y) FROM t", S | C},
		// … by comments, literals and strings that hide the keyword.
		{"/* tag */ SET app.tenant = '42'", S | X},
		{"-- name: SetTenant :exec\nSET app.tenant = '42'", S | X},
		{"  (SET x = 1)", S | X},
		{"SELECT 1; SET x.y = 1", S | O | X | A},
		{"SELECT 'a''b'; SELECT set_config('a', 'b', false)", S | O | X | A},
		{"SELECT E'\\''; SET x = 1 --'", S | O | X | A},
		{"SELECT $a$ $b$ $a$; SET x = 1", S | O | X | A},
		// A string continued on the next line is read as it began: here,
		// a backslash escapes the quote, so the call is code.
		{"SELECT E'a'\n'\\'', set_config('a.b', 'c', false) -- '", S | X},
		{"SELECT 'a'\n  -- comment\n'b' || set_config('a.b', 'c', false)", S | X},
		// Strings read either way (standard_conforming_strings on or off).
		{"SELECT 'a\\', set_config('a.b', 'c', false) --'", S | X},
		{"SELECT 'a\\'', set_config('a.b', 'c', false) -- '", S | X},
		{"SELECT N'a\\'', set_config('a.b', 'c', false) -- '", S | X},
		{"SELECT 'C:\\temp\\' AS path", 0},
		{"SELECT 1 /* unterminated", U},
		{"SELECT 'unterminated", U},
		// Code the classifier cannot see: state, run at most once.
		{"DO $$BEGIN PERFORM set_config('a.b', 'c', false); END$$", U},
		{"CALL p()", U},
		{"COPY t FROM STDIN", T},
		{"CREATE TABLE t (x int)", T},
		{"ALTER TABLE t ADD COLUMN y int", T},
		{"frobnicate", U},
		{"\"select\" 1", U},
		// What PostgreSQL runs only outside a transaction block.
		{"VACUUM t", U},
		{"CLUSTER", U},
		{"REINDEX TABLE t", U},
		{"CREATE DATABASE d", T | A},
		{"drop database if exists d", T | A},
		{"CREATE TABLESPACE s LOCATION ''", T | A},
		{"ALTER SYSTEM SET work_mem = '4MB'", T | A},
		{"ALTER DATABASE d SET TABLESPACE s", T | A},
		{"ALTER DATABASE d SET work_mem = '4MB'", T},
		{"CREATE UNIQUE INDEX CONCURRENTLY i ON t (x)", T | A},
		{"DROP INDEX CONCURRENTLY i", T | A},
		{"ALTER TABLE t DETACH PARTITION p CONCURRENTLY", T | A},
		{"CREATE SUBSCRIPTION s CONNECTION '' PUBLICATION p", T | A},
		// What no reset undoes.
		{"load 'auto_explain'", T | P | X},
		{"CREATE FUNCTION f() RETURNS void LANGUAGE C AS '$libdir/auto_explain', 'f'", T | P | X},
		{`CREATE OR REPLACE PROCEDURE p() AS 'auto_explain', 'p' LANGUAGE "c"`, T | P | X},
		{"create function f() returns int language 'C' as 'x', 'y'", T | P | X},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", T},
		{"CREATE FUNCTION f(c int) RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN c; END $$", T},
		{"DISCARD ALL", S | P | X | A},
		{"DEALLOCATE ALL", S | P | X},
		{"DEALLOCATE PREPARE ALL", S | P | X},
		// A statement a driver prepared: pgx's cache, dbscope's, a
		// *sql.Stmt of pgx's stdlib (stmt_ and 48 hex digits), one named
		// by its text (another driver's), one not decoded.
		{"DEALLOCATE stmtcache_01ec8e0728552c46", S | P | X},
		{"DEALLOCATE stmt_5b1f7e0d9c2a4b3e8f6a1d0c7b9e2f4a6c8d0e1f3a5b7c9d", S | P | X},
		{"DEALLOCATE stmt_5b1f", S | X},
		{"deallocate StmtCache_01ec8e0728552c46", S | P | X},
		{`DEALLOCATE PREPARE "dbscope_3"`, S | P | X},
		{`DEALLOCATE "SELECT name FROM items WHERE id = $1"`, S | P | X},
		{`DEALLOCATE "Q1"`, S | P | X},
		{`DEALLOCATE U&"q1"`, S | P | X},
		{"DEALLOCATE commit", S | P | X},
		{`DEALLOCATE PREPARE "q1"`, S | X},
		{"DEALLOCATE prepare", S | X},
		{"DEALLOCATE PREPARE q_2$", S | X},
		{"SELECT setseed(0.5)", S | P | X},
		// U&"…" UESCAPE 'c' is one name, as PostgreSQL's parser reads it.
		{`SELECT U&"!0073etseed" UESCAPE '!'(0.5)`, S | P | X | C},
		{`SELECT U&"!0073etseed" /* c */ UESCAPE '!' (0.5)`, S | P | X | C},
		{`SELECT (0.5).U&"!0073etseed" UESCAPE '!'`, S | P | X | C},
		// Attribute notation: (x).f is f(x), for an x of any type.
		{"SELECT (0.5::float8).setseed", S | P | X},
		{"SELECT (42::bigint).pg_advisory_lock", S | X},
		{`SELECT t."pg_advisory_lock_shared" FROM (SELECT 42::bigint) t`, S | X},
		{"SELECT ('s'::regclass).currval", Q},
		{"SELECT a[1].currval FROM (SELECT ARRAY['s'::regclass] a) t", Q},
		{"SELECT $1.currval", Q},
		// A column so named: t.f is f(t) for a t of FROM only, and then
		// a whole row (or a function's scalar, FROM CAST('s' AS regclass)
		// t, not told); lastval, setval take no call of one argument.
		{"SELECT t.currval, r.lastval, (r).lastval, r.setval FROM t, r", 0},
		{"SELECT ('s'::regclass).nextval", S},
		{`SELECT (1).U&"x"`, S | P | X | C},
		{"SELECT (t).name FROM pg_namespace t", 0},
		{"SELECT pg_catalog.pg_advisory_xact_lock(1)", 0},
		// The seed of random(): no reset undoes it, even SET LOCAL's,
		// even RESET's.
		{"SET seed = 0.5", S | P | X},
		{"SET SEED TO 0.5", S | P | X},
		{"SET LOCAL seed = 0.5", S | P | X | L},
		{"RESET seed", S | P | X},
		{"SELECT set_config('seed', '0.5', true)", S | P | X | L},
		{"SET seed.x = 1", S | X}, // a custom setting named seed.x
		// What else no reset undoes, in any schema.
		{"SELECT dblink_connect('c', 'dbname=x')", S | P | X},
		{"SELECT public.dblink_connect('c', 'dbname=x')", S | P | X | C},
		{"SELECT pg_catalog.pg_backup_start('b', true)", S | P | X},
		{"SELECT * FROM pg_create_physical_replication_slot('s', true, true)", S | P | X},
		{"SELECT pg_replication_origin_session_setup('o')", S | P | X},
		// A name after OPERATOR( … ) is an operand: a function called,
		// not an alias.
		{"SELECT 'a' OPERATOR(||) set_config('app.x', 'leak', false)", S | X},
		{"SELECT true OPERATOR(pg_catalog.=) pg_try_advisory_lock(42)", S | X},
		{"SELECT 1 OPERATOR(pg_catalog.+) f(2)", S | C},
		{"SELECT 'x' OPERATOR(||) setseed(0.5)::text", S | P | X},
		{"SELECT a OPERATOR(pg_catalog.+) 1 FROM t x(a)", 0}, // the alias with columns still one
		// A name after DISTINCT ON ( … ) begins the select list: a
		// function called, not an alias.
		{"SELECT DISTINCT ON (1) set_config('app.x', 'leak', false)", S | X},
		{"SELECT DISTINCT ON (v.x) pg_try_advisory_lock(4242) FROM (VALUES (1)) v(x)", S | X},
		{"select distinct on (1) setseed(0.5)", S | P | X},
		{"SELECT DISTINCT ON (a) a, b FROM t x(a, b)", 0},
		// Words of the grammar that are also names of functions, where
		// they are the functions.
		{"SELECT NOT materialized(1)", S | C},
		{"WITH x AS NOT MATERIALIZED (SELECT 1) SELECT * FROM x", 0},
		{"WITH x AS MATERIALIZED (SELECT 1) SELECT * FROM x", 0},
		{"SELECT * FROM a JOIN b ON conflict(a.x)", S | C},
		{"SELECT * FROM a JOIN b ON conflict(a.x) WHERE true", S | C},
		{"SELECT 1 FROM a JOIN b ON conflict(1) UNION ALL SELECT 2 AS do", S | C},
		{"SELECT 1 FROM a JOIN b ON conflict(1) WHERE a.do = 1", S | C},
		{"INSERT INTO w SELECT 1 FROM a JOIN b ON conflict(1) ON CONFLICT DO NOTHING", S | C},
		// XMLTABLE's PATH takes an expression.
		{"SELECT * FROM XMLTABLE('/r' PASSING '<r/>' COLUMNS a int PATH leak(1))", S | C},
		{`SELECT * FROM XMLTABLE('/r' PASSING '<r/>' COLUMNS a int "path" leak(1))`, S | C},
		// The seed's name quoted, U&-quoted or continued.
		{`SET "seed" = 0.5`, S | P | X},
		{`SET LOCAL "SEED" = 0.5`, S | P | X | L},
		{`SET LOCAL U&"seed" = 0.5`, S | P | X | L},
		{"SELECT set_config('se'\n'ed', '0.5', true)", S | P | X | L},
		{"SELECT set_config(E'se\\x65d', '0.5', true)", S | P | X | L},
		// A name computed may be seed (or search_path).
		{"SELECT set_config($1, $2, true)", S | P | X | L},
		{"SELECT set_config(lower('SEED'), '0.5', true)", S | P | X | L},
		{"SELECT set_config('se' || 'ed', '0.5', true)", S | P | X | L},
		{"SELECT set_config(('seed'), '0.5', true)", S | P | X | L},
		// TREAT(x AS name) calls pg_catalog.name(x).
		{"SELECT TREAT(0.5 AS setseed)", S | P | X | C},
		{"SELECT treat(42::bigint AS pg_advisory_lock)", S | P | X | C},
		{"SELECT TREAT('s'::regclass AS nextval)", S | P | X | C},
		// pg_temp in a search_path continued or with another escape.
		{"SET LOCAL search_path = 'pg_'\n'temp'", S | X | L},
		{"SET LOCAL search_path = U&'pg!005ftemp' UESCAPE '!'", S | X | L},
		{"SELECT set_config('search_path', 'pg_'\n'temp', true)", S | X | L},
		// A search_path written with escapes, or computed: it may name
		// pg_temp (refused under TransactionPooling).
		{"SET LOCAL search_path = E'pg\\x5ftemp'", S | X | L},
		{"SET search_path TO U&'pg\\005Ftemp'", S | X},
		{"SELECT set_config('search_path', 'pg_' || 'temp', true)", S | X | L},
		{"SELECT set_config('search_path', $1, true)", S | X | L},
		{"SELECT set_config('search_path', 'public', true)", L},
		{"SET LOCAL search_path = public, 'x'", L},
		// SET SCHEMA 'value' is the grammar's other spelling of SET
		// search_path (a setting schema.x is another).
		{"SET LOCAL SCHEMA E'pg\\137temp'", S | X | L},
		{"SET LOCAL SCHEMA U&'pg\\005ftemp'", S | X | L},
		{"SET LOCAL SCHEMA 'pg_temp'", S | X | L},
		{"set local schema 'public'", L},
		{"SET SCHEMA 'public'", S | X},
		{"SET LOCAL schema.x = 'pg_temp'", S | X | L},
		// An UPDATE of pg_settings: its rule (pg_settings_u) calls
		// set_config(name, setting, false), the name chosen by the WHERE.
		{"UPDATE pg_settings SET setting = '4242' WHERE name = 'work_mem'", S | C | P | X},
		{`UPDATE ONLY pg_catalog."pg_settings" s SET setting = '1' WHERE s.name = 'seed'`, S | C | P | X},
		{"WITH u AS (UPDATE pg_settings SET setting = '0' WHERE name = $1 RETURNING 1) SELECT * FROM u", S | C | P | X},
		{"SELECT setting FROM pg_settings WHERE name = 'work_mem'", 0},
		{"WITH s AS (SELECT setting FROM pg_settings) UPDATE log SET v = 1", S | C},
		{"INSERT INTO log SELECT setting FROM pg_settings ON CONFLICT (v) DO UPDATE SET v = 2", S | C | D},
		{"SELECT v FROM log WHERE v IN (SELECT setting FROM pg_settings) FOR UPDATE", 0},
		{"UPDATE settings SET v = 1", S | C | D},
		{`UPDATE ONLY (pg_catalog . pg_settings) SET setting = '1' WHERE name = 'work_mem'`, S | C | P | X},
		// A character of two bytes whose second is a backslash's (SJIS,
		// BIG5): the quote after it ends the string.
		{"SELECT E'\x95\x5c', set_config('app.x', 'leak', false) -- '", S | X},
		{"SELECT E'\xa4\x5c', pg_advisory_lock(1) -- '", S | X},
		{"SELECT E'\\\\', 1", 0},
	} {
		if got := classify(tc.query) &^ (kindSetting | kindResolve | kindPathLate); got != tc.want { // TestClassifySetting, TestClassifyResolve, TestClassifyPathLate
			t.Errorf("classify(%q) = %s, want %s", tc.query, kindString(got), kindString(tc.want))
		}
	}
}

// Under a client-only client_encoding PostgreSQL splits a text into the
// encoding's characters (as pg_encoding_mblen says) before it reads it,
// and a byte above ASCII may take a backslash, a bracket or an
// operator's byte into its character: each text here hides, from a
// reading byte by byte, what PostgreSQL runs in the splits named, and
// is read so by classify, whatever the session's encoding (the
// classifier does not follow it). Texts in UTF8 that such a split
// misreads stay clean. TestClientEncodingSplitsText has PostgreSQL run
// such texts.
func TestClassifyClientEncodings(t *testing.T) {
	const (
		S = kindState
		X = kindSession
		C = kindCode
	)
	for _, tc := range []struct {
		text    string
		escapes bool      // read with standard_conforming_strings off
		splits  []mbSplit // the encodings' splits where PostgreSQL runs what it hides
		want    queryKind
	}{
		// 0xB1 is a character of one byte in SJIS, 0x95 0x5C one of two:
		// the quote after them ends the string. (Paired as in BIG5, 0xB1
		// 0x95 is one and the backslash escapes the quote.)
		{"SELECT E'\xb1\x95\x5c'; LISTEN c; --'", false, []mbSplit{splitSJIS}, S | X},
		{"SELECT '\xb1\x95\x5c'; SELECT set_config('a.b', 'c', false); --'", true, []mbSplit{splitSJIS}, S | X},
		// A backslash escapes a character, all its bytes.
		{"SELECT E'\\\x95\x5c'; LISTEN c; --'", false, []mbSplit{splitSJIS, splitTwo}, S | X},
		{"SELECT E'\\\xa4\x5c', 1; SELECT pg_advisory_lock(1); --'", false, []mbSplit{splitTwo}, S | X},
		// A character of four bytes in GB18030, of two in the others.
		{"SELECT E'\x81\x30\x81\x30\\\x95\x5c'; LISTEN c; --'", false, []mbSplit{splitGB18030}, S | X},
		// A dollar quote's tag of one character: what follows runs.
		{"SELECT $\x95[$ ' $\x95[$; LISTEN c; --'", false, []mbSplit{splitSJIS, splitTwo, splitGB18030}, S | X},
		{"SELECT $\xa4|$ ' $\xa4|$; PREPARE p AS SELECT 1; --'", false, []mbSplit{splitTwo}, S | X | C},
		// An identifier of one character called: a user's function.
		{"SELECT x\x95[(1)", false, []mbSplit{splitSJIS, splitTwo, splitGB18030}, S | C},
		{"SELECT 1 FROM t WHERE a = \x95`(2)", false, []mbSplit{splitSJIS, splitTwo}, S | C},
	} {
		if got := classifyAs(tc.text, tc.escapes, splitBytes); got&tc.want == tc.want {
			t.Errorf("%q read byte by byte is %s: it hides nothing", tc.text, kindString(got))
		}
		for _, sp := range tc.splits {
			// (GB18030 without a character of four bytes splits as
			// splitTwo, and is read as it.)
			if !splitMatters(tc.text, sp) && !(sp == splitGB18030 && splitMatters(tc.text, splitTwo)) {
				t.Errorf("%q: split %d is not read", tc.text, sp)
			}
			if got := classifyAs(tc.text, tc.escapes, sp); got&tc.want != tc.want {
				t.Errorf("%q in split %d is %s, want %s", tc.text, sp, kindString(got), kindString(tc.want))
			}
		}
		if got := classify(tc.text); got&tc.want != tc.want {
			t.Errorf("classify(%q) = %s, want %s", tc.text, kindString(got), kindString(tc.want))
		}
	}
	for _, q := range []string{
		"SELECT 列[1] FROM 表 WHERE 名 = '日本語'",
		"SELECT E'日本語\\n', '表'",
		"SELECT E'\\\\表', x ~ '語|表' FROM t",
		"SELECT $表$ '表 $表$",
		// No client-only encoding takes the backslash into a character:
		// SJIS begins none with the second byte of à (0xA0) or π (0x80).
		`SELECT E'voilà\'s'`,
		`SELECT E'Ελλάδα π\''`,
	} {
		if got := classify(q); got != 0 {
			t.Errorf("classify(%q) = %s, want clean", q, kindString(got))
		}
	}
}

func kindString(k queryKind) string {
	var parts []string
	for _, f := range []struct {
		k    queryKind
		name string
	}{{kindState, "state"}, {kindBegin, "begin"}, {kindOnce, "once"}, {kindPoison, "poison"}, {kindCode, "code"}, {kindSession, "session"},
		{kindAlone, "alone"}, {kindSeqRead, "seqread"}, {kindTxSet, "txset"}, {kindDML, "dml"}} {
		if k&f.k != 0 {
			parts = append(parts, f.name)
		}
	}
	if len(parts) == 0 {
		return "clean"
	}
	return strings.Join(parts, "|")
}

// The cache of classifications answers as classify does, for the same
// string, for a copy of it elsewhere in memory, and for queries sharing
// its slots.
func TestNoteCache(t *testing.T) {
	var c noteCache
	queries := []string{"SELECT 1", "SET x = 1", "begin", "PREPARE q AS SELECT 1", "select set_config('a', 'b', false)",
		"SELECT $1", "SELECT '$1'"}
	for i := range 3 * noteSlots {
		queries = append(queries, fmt.Sprintf("SELECT %d", i), fmt.Sprintf("SET x = %d", i))
	}
	for round := range 3 {
		for _, q := range queries {
			want, wantStray := readQuery(q)
			if got, stray := c.read(q); got != want || stray != wantStray {
				t.Fatalf("round %d: read(%q) = %v, %v, readQuery says %v, %v", round, q, got, stray, want, wantStray)
			}
			if got, stray := c.read(strings.Clone(q)); got != want || stray != wantStray {
				t.Fatalf("round %d: read of a copy of %q = %v, %v, readQuery says %v, %v", round, q, got, stray, want, wantStray)
			}
		}
	}
	long := "SET x = '" + strings.Repeat("y", noteMaxQuery) + "'"
	if k, _ := c.read(long); k&kindState == 0 {
		t.Fatal("a long SET is not stateful")
	}
}

func BenchmarkNote(b *testing.B) {
	s := Scope{pool: new(Pool)}
	for b.Loop() {
		s.kindOf("SELECT id, body FROM messages WHERE room = $1 ORDER BY id DESC LIMIT 50", nil)
	}
}

// BenchmarkClassify is the price of a query's first sight (see noteCache).
func BenchmarkClassify(b *testing.B) {
	for _, q := range []string{
		"SELECT id, body FROM messages WHERE room = $1 ORDER BY id DESC LIMIT 50",
		"INSERT INTO items (name, price) VALUES ($1, $2) RETURNING id",
		`SELECT name FROM items WHERE name LIKE E'a\\%' AND id = ANY($1) AND lower(name) <> 'x'`,
		"SELECT id FROM 商品 WHERE 名前 = '日本語' AND tags @> ARRAY['東京'] AND note LIKE 'é%ü'",
		"SELECT id FROM items WHERE note ~ 'é|ü'", // a byte above ASCII before a |: read in two splits more
	} {
		b.Run(strings.Fields(q)[0], func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				classify(q)
			}
		})
	}
}

// kindSetting marks what sets a setting for the session in view, and
// nothing else of the session's state.
func TestClassifySetting(t *testing.T) {
	for q, want := range map[string]bool{
		"SET default_transaction_read_only = on":               true,
		"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY": true,
		"RESET ALL": true,
		"SELECT set_config('default_transaction_isolation', 'serializable', false)": true,
		"SET LOCAL statement_timeout = 1":                                           false,
		"SELECT set_config('app.x', '1', true)":                                     false,
		"CREATE TEMP TABLE x (n int)":                                               false,
		"LISTEN ch":                                                                 false,
		"SELECT pg_advisory_lock(1)":                                                false,
		"SELECT f()":                                                                false,
	} {
		if got := classify(q)&kindSetting != 0; got != want {
			t.Errorf("classify(%q) sets a setting: %v, want %v", q, got, want)
		}
	}
}

// What changes how names resolve (kindResolve): the search_path, the
// role, temporary objects, in every form; and nothing else.
func TestClassifyResolve(t *testing.T) {
	for q, want := range map[string]bool{
		"SET search_path = x":                              true,
		"SET LOCAL search_path TO x":                       true,
		"SET SESSION search_path TO x":                     true,
		"set Search_Path to x":                             true,
		"RESET search_path":                                true,
		"RESET ALL":                                        true,
		"SET ROLE r":                                       true,
		"SET LOCAL ROLE r":                                 true,
		"SET SESSION AUTHORIZATION r":                      true,
		"RESET SESSION AUTHORIZATION":                      true,
		"RESET role":                                       true,
		"SELECT set_config('search_path', 'x', true)":      true,
		"SELECT set_config('role', 'r', false)":            true,
		"SELECT set_config($1, $2, true)":                  true,
		"SELECT set_config(E'search\\x5fpath', 'x', true)": true,
		"CREATE TEMP TABLE t (n int)":                      true,
		"CREATE TEMP TABLE t (n int) ON COMMIT DROP":       true,
		"SELECT 1 INTO TEMP t":                             true,
		"CREATE TABLE pg_temp.t (n int)":                   true,
		"CREATE VIEW \"pg_temp\".v AS SELECT 1":            true,
		"SET statement_timeout = 1":                        false,
		"SET LOCAL app.tenant = '7'":                       false,
		"SELECT set_config('app.tenant', $1, true)":        false,
		"SELECT set_config('search_path.x', 'a', true)":    false,
		"CREATE TABLE t (n int)":                           false,
		"SELECT pg_advisory_lock(1)":                       false,
		"SELECT * FROM search_path":                        false,
		"INSERT INTO role VALUES (1)":                      false,
	} {
		if got := classify(q)&kindResolve != 0; got != want {
			t.Errorf("classify(%q) changes how names resolve: %v, want %v", q, got, want)
		}
	}
}

// What sets a setting that may change how a statement's text or its
// constants are read (DateStyle, TimeZone, …: any but those known not
// to) owes what kindResolve owes, the statements the connection keeps
// prepared dropped at the boundary, in every form: SET, SET LOCAL, RESET,
// set_config, an UPDATE of pg_settings, in a string of several
// statements. What sets none, a custom setting, a timeout, a resource or
// the planner's costs and methods owes nothing new.
func TestClassifyParseSetting(t *testing.T) {
	for q, want := range map[string]bool{
		"SET TIME ZONE 'Asia/Tokyo'":                                    true,
		"SET LOCAL TIME ZONE 'Asia/Tokyo'":                              true,
		"SET SESSION TIME ZONE LOCAL":                                   true,
		"SET timezone = 'UTC'":                                          true,
		"RESET TIME ZONE":                                               true,
		"RESET TimeZone":                                                true,
		"SET LOCAL DateStyle = 'ISO, DMY'":                              true,
		"set local datestyle to dmy":                                    true,
		`SET "DateStyle" = 'DMY'`:                                       true,
		`SET LOCAL U&"DateStyle" = 'DMY'`:                               true,
		"SET LOCAL IntervalStyle = sql_standard":                        true,
		"SET transform_null_equals = on":                                true,
		"SET LOCAL transform_null_equals TO on":                         true,
		"SET LOCAL standard_conforming_strings = off":                   true,
		"SET backslash_quote = on":                                      true,
		"SET array_nulls = off":                                         true,
		"SET XML OPTION DOCUMENT":                                       true,
		"SET LOCAL xmloption = document":                                true,
		"SET timezone_abbreviations = 'India'":                          true,
		"SET lc_monetary = 'C'":                                         true,
		"SET default_text_search_config = 'simple'":                     true,
		"SET extra_float_digits = 0":                                    true, // (0.1::float8 + 0.2::float8)::text is folded
		"SET LOCAL bytea_output = escape":                               true,
		"SET quote_all_identifiers = on":                                true,
		"SET some_setting_not_known = 1":                                true,
		"SELECT set_config('TimeZone', 'Asia/Tokyo', false)":            true,
		"SELECT set_config('DATESTYLE', 'DMY', true)":                   true,
		"SELECT set_config('transform_null_equals', 'on', true)":        true,
		"SELECT set_config($1, 'on', true)":                             true,
		"SELECT set_config('Date' || 'Style', 'DMY', true)":             true,
		"UPDATE pg_settings SET setting = 'DMY' WHERE name = $1":        true,
		"SELECT 1; SET LOCAL DateStyle = 'DMY'":                         true,
		"SET LOCAL app.tenant = '7'; SET LOCAL TIME ZONE 'UTC'":         true,
		"SELECT 1; SELECT set_config('TimeZone', 'UTC', true)":          true,
		"SET statement_timeout = 1":                                     false,
		"SET LOCAL statement_timeout = '5s'":                            false,
		"SET LOCAL lock_timeout TO 100":                                 false,
		"SET idle_in_transaction_session_timeout = 0":                   false,
		"SET LOCAL work_mem = '64MB'":                                   false,
		"SET enable_seqscan = off":                                      false,
		"SET constraint_exclusion = on":                                 true,
		"SET LOCAL enable_partition_pruning = off":                      true,
		"SET LOCAL random_page_cost = 1.1":                              false,
		"SET LOCAL jit = off":                                           false,
		"SET application_name = 'x'":                                    false,
		"SET LOCAL synchronous_commit = off":                            false,
		"SET LOCAL app.tenant = '7'":                                    false,
		"SET local.tenant = '7'":                                        false,
		"SET session.x TO '7'":                                          false,
		"SET LOCAL datestyle.x = '7'":                                   false,
		`SET LOCAL "app.tenant" = '7'`:                                  false,
		"RESET app.tenant":                                              false,
		"RESET statement_timeout":                                       false,
		"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE":                  false,
		"SET LOCAL TRANSACTION READ ONLY":                               false,
		"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY":          false,
		"SET default_transaction_isolation = serializable":              false,
		"SET CONSTRAINTS ALL DEFERRED":                                  false,
		"SELECT set_config('app.tenant', $1, true)":                     false,
		"SELECT set_config('statement_timeout', '1s', true)":            false,
		"SELECT set_config('enable_hashjoin', 'off', false)":            false,
		"UPDATE t SET timezone = 'UTC'":                                 false,
		"SELECT current_setting('DateStyle'), now() AT TIME ZONE 'UTC'": false,
		"SHOW DateStyle":                                                false,
		"SELECT 1; SET LOCAL statement_timeout = 1":                     false,
	} {
		if got := classify(q)&kindResolve != 0; got != want {
			t.Errorf("classify(%q) owes the prepared statements' drop: %v, want %v", q, got, want)
		}
	}
}

// What sets a search_path that puts pg_catalog after another schema
// (kindPathLate), or may.
func TestClassifyPathLate(t *testing.T) {
	for q, want := range map[string]bool{
		"SET search_path = s, pg_catalog":                          true,
		"SET LOCAL search_path TO s, \"pg_catalog\"":               true,
		"SET search_path = 's', 'pg_catalog'":                      true,
		"SET search_path = 's, pg_catalog'":                        true,
		"SET LOCAL search_path = E's, pg\\x5fcatalog'":             true,
		"SELECT set_config('search_path', 's, pg_catalog', true)":  true,
		"SELECT set_config('search_path', $1, true)":               true,
		"SELECT set_config('search_path', 'pg_catalog, s', false)": false,
		"SET search_path = pg_catalog, s":                          false,
		"SET search_path TO s, public":                             false,
		"SET search_path TO DEFAULT":                               false,
		"SET LOCAL search_path = 's'":                              false,
		"SELECT set_config('search_path', 's, public', true)":      false,
		"SET statement_timeout = 1":                                false,
	} {
		if got := classify(q)&kindPathLate != 0; got != want {
			t.Errorf("classify(%q) puts pg_catalog late: %v, want %v", q, got, want)
		}
	}
	for v, want := range map[string]bool{
		"s, pg_catalog": true, `"$user", PG_CATALOG`: true, `s,"pg_catalog"`: true,
		"pg_catalog, s": false, "s, public": false, "": false, `"Pg_Catalog", x`: false, `x, "Pg_Catalog"`: false,
	} {
		if got := pathLate(v); got != want {
			t.Errorf("pathLate(%q) = %v, want %v", v, got, want)
		}
	}
}

// A placeholder that PostgreSQL does not read as one is told apart from
// one it does (see readQuery).
func TestClassifyStrayPlaceholder(t *testing.T) {
	for q, want := range map[string]bool{
		"SELECT $1":                        false,
		"SELECT $1, $2 FROM t WHERE x=$12": false,
		"SELECT '$' || $1":                 false,
		`SELECT '\' || $1`:                 false, // read with escapes, '\' || $1 is one string: pgx refuses that mode
		`SELECT E'\'' || $1`:               false,
		"SELECT 1":                         false,
		// PostgreSQL reads no placeholder there, and neither does pgx.
		"SELECT '$1'":                false,
		"SELECT $$ $1 $$, $1":        false,
		"SELECT 1 -- $1\n, $1":       false,
		"SELECT 1 /* $1 /* $2 */ */": false,
		`SELECT "$1", $1`:            false,
		"SELECT U&'$1'":              false,
		"SELECT x FROM t WHERE label = '$5 off' AND id = $1": false,
		`SELECT "e'", $1`:      false,
		`SELECT abe'x' || $1`:  false,
		"SELECT '\xff $1', $1": false, // pgx stops reading at the byte that is not UTF-8
		// pgx finds a placeholder where PostgreSQL reads none.
		"SELECT x$1 FROM t":            true,
		`SELECT name'\'' , $1 ; --'`:   true,
		"SELECT 1 AS x$a$, $a$ $1 $a$": true,
		`SELECT e'\'' , $1 ; --'`:      false, // an E'…' to both
		// A reading in a client-only encoding (BIG5, GBK, SJIS: ソ's last
		// byte takes in the backslash) is not pgx's, which runs with
		// client_encoding UTF8 alone.
		"SELECT E'ソ\\'s' || $1::text": false,
	} {
		if _, got := readQuery(q); got != want {
			t.Errorf("readQuery(%q) says stray %v, want %v", q, got, want)
		}
	}
}
