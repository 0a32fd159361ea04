package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Ways session state got past the classifier or the reset, each with
// PostgreSQL asked in the next scope on the same connection (one slot,
// one connection, every exec mode of pgx's): what it finds must be what a
// fresh session holds.

var allModes = []string{"cache_statement", "exec", "simple_protocol", "cache_describe", "describe_exec"}

// runThenAsk runs unit in one scope of p and returns what ask reads in
// the next, with whether both ran on the same backend.
func runThenAsk(t *testing.T, p *dbctx.Pool, unit func(ctx context.Context, s *dbctx.Scope) error, ask string) (got string, same bool) {
	t.Helper()
	var before, after int
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		if before, err = queryInt(ctx, s, "SELECT pg_backend_pid()"); err != nil {
			return err
		}
		return unit(ctx, s)
	})
	if err != nil {
		t.Fatalf("the unit: %v", err)
	}
	err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		if err := s.QueryRowContext(ctx, ask).Scan(&got); err != nil {
			return err
		}
		after, err = queryInt(ctx, s, "SELECT pg_backend_pid()")
		return err
	})
	if err != nil {
		t.Fatalf("the next unit: %v", err)
	}
	return got, before == after
}

func exec(q string, args ...any) func(ctx context.Context, s *dbctx.Scope) error {
	return func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, q, args...)
		return err
	}
}

// The seed of random() survives every reset: whatever sets it costs the
// connection (a fresh session's random() is not the seeded one's).
func TestSeedCostsTheConnection(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	seeded := func() string {
		db := env.Open(t)
		db.SetMaxOpenConns(1)
		var r string
		if _, err := db.Exec("SELECT setseed(0.5)"); err != nil {
			t.Fatal(err)
		}
		if err := db.QueryRow("SELECT random()::text").Scan(&r); err != nil {
			t.Fatal(err)
		}
		return r
	}()
	units := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"SET seed":                      exec("SET seed = 0.5"),
		"SET SEED TO":                   exec("SET SEED TO 0.5"),
		"set_config('seed', …, true)":   exec("SELECT set_config('seed', '0.5', true)"),
		"setseed after OPERATOR()":      exec("SELECT 'x' OPERATOR(||) setseed(0.5)::text"),
		"setseed named U& with UESCAPE": exec(`SELECT U&"!0073etseed" UESCAPE '!'(0.5)`),
		"SET LOCAL seed in Atomic": func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error { return exec("SET LOCAL seed = 0.5")(ctx, s) })
		},
	}
	for _, mode := range allModes {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		for name, unit := range units {
			before := p.Stats().Discarded.Unresettable
			got, same := runThenAsk(t, p, unit, "SELECT random()::text")
			if got == seeded {
				t.Errorf("%s, %s: the next scope's random() is the seeded one (same backend %v)", mode, name, same)
			}
			if same || p.Stats().Discarded.Unresettable != before+1 {
				t.Errorf("%s, %s: the connection was not closed (same backend %v)", mode, name, same)
			}
		}
	}
}

// The sweep's check runs before the reset, under the search_path the last
// scope left: an operator of the user's found first there must not skip
// the sweep (a statement PREPAREd in SQL would survive it).
func TestSweepCheckOwnOperators(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	sch := `"` + env.Schema() + `"`
	for _, q := range []string{
		"CREATE FUNCTION " + sch + ".div1(integer, integer) RETURNS integer LANGUAGE sql AS 'SELECT 1'",
		"CREATE OPERATOR " + sch + "./ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = " + sch + ".div1)",
		"CREATE FUNCTION " + sch + ".eq1(bigint, integer) RETURNS boolean LANGUAGE sql AS 'SELECT true'",
		"CREATE OPERATOR " + sch + ".= (LEFTARG = bigint, RIGHTARG = integer, FUNCTION = " + sch + ".eq1)",
		"CREATE FUNCTION " + sch + ".code() RETURNS int LANGUAGE sql AS 'SELECT 1'",
	} {
		mustExec(t, env.Admin(), q)
	}
	for _, mode := range []string{"cache_statement", "exec", "cache_describe", "describe_exec"} {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
			if err := exec("PREPARE zzp AS SELECT 1")(ctx, s); err != nil {
				return err
			}
			if err := exec("SELECT code()")(ctx, s); err != nil {
				return err
			}
			return exec(fmt.Sprintf("SELECT set_config('search_path', '%s, pg_catalog', false)", env.Schema()))(ctx, s)
		}, "SELECT count(*)::text FROM pg_prepared_statements WHERE from_sql")
		if got != "0" || !same {
			t.Errorf("%s: the next scope finds %s statements PREPAREd in SQL (same backend %v), want 0", mode, got, same)
		}
	}
}

// The transaction defaults a scope set do not make the next scope's first
// statement read-only (or serializable): the reset that shares its
// transaction would begin it under them.
func TestTxDefaultsDoNotCarry(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE FUNCTION "+env.Schema()+".code() RETURNS int LANGUAGE sql AS 'SELECT 1'")
	for _, mode := range allModes {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		for _, set := range []string{
			"SET default_transaction_read_only = on",
			"SET default_transaction_isolation = serializable",
			"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
			"SELECT set_config('default_transaction_deferrable', 'on', false)",
		} {
			got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
				if err := exec("SELECT code()")(ctx, s); err != nil {
					return err
				}
				return exec(set)(ctx, s)
			}, "SELECT current_setting('transaction_read_only') || ' ' || current_setting('transaction_isolation') || ' ' || current_setting('transaction_deferrable')")
			if got != "off read committed off" {
				t.Errorf("%s: after %q the next scope's first statement runs with %q (same backend %v)", mode, set, got, same)
			}
		}
	}
}

// Where client_encoding is one whose characters of two bytes may end in
// a backslash's byte (SJIS), E'\x95\x5c' is a string of one character:
// the quote after it ends the string, and what follows runs.
func TestTwoByteEncodingString(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	for _, mode := range []string{"cache_statement", "exec", "cache_describe", "describe_exec"} {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if err := exec("SET LOCAL client_encoding = 'SJIS'")(ctx, s); err != nil {
					return err
				}
				return exec("SELECT E'\x95\x5c', set_config('app.x', 'leak', false) -- '")(ctx, s)
			})
		}, "SELECT coalesce(current_setting('app.x', true), '')")
		if got != "" {
			t.Errorf("%s: the next scope sees app.x %q (same backend %v)", mode, got, same)
		}
	}
}

// Under a client-only client_encoding PostgreSQL splits a text into the
// encoding's characters before it reads it, and a byte above ASCII may
// take the byte after it into its character: in SJIS 0x95 0x5C is one
// character, 0xB1 one of its own, so in E'\xb1\x95\x5c' the quote after
// them ends the string, and in E'\\\x95\x5c' the backslash escapes the
// character, not the quote; a dollar quote's tag $\x95[$ is one
// character long. Each text hides, so, what leaves state in the session
// (hiddenState), in the encoding named.
const hiddenState = "SELECT set_config('app.x', 'leak', false), pg_try_advisory_lock(4242); LISTEN enc_chan; PREPARE enc_p AS SELECT 1; --'"

var encodingTexts = []struct{ enc, text string }{
	{"SJIS", "SELECT E'\xb1\x95\x5c'; " + hiddenState},
	{"SJIS", "SELECT E'\\\x95\x5c'; " + hiddenState},
	{"SJIS", "SELECT $\x95[$ ' $\x95[$; " + hiddenState},
	{"SHIFT_JIS_2004", "SELECT E'\xb1\x95\x5c'; " + hiddenState},
	{"SHIFT_JIS_2004", "SELECT $\x95[$ ' $\x95[$; " + hiddenState},
	{"BIG5", "SELECT E'\\\xa4\x5c'; " + hiddenState},
	{"BIG5", "SELECT $\xa4[$ ' $\xa4[$; " + hiddenState},
	{"GBK", "SELECT E'\\\x95\x5c'; " + hiddenState},
	{"GBK", "SELECT $\x95|$ ' $\x95|$; " + hiddenState},
	{"GB18030", "SELECT E'\x81\x30\x81\x30\\\x95\x5c'; " + hiddenState},
}

// askHidden reads in a session what hiddenState leaves: "|0|0|0" where
// nothing.
const askHidden = `SELECT format('%s|%s|%s|%s', current_setting('app.x', true),
	(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
	(SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_prepared_statements WHERE from_sql))`

// hiddenRuns asks PostgreSQL, on a connection of its own, that it runs
// what text hides under client_encoding enc (else the tests below would
// see nothing for want of it).
func hiddenRuns(t *testing.T, db *sql.DB, enc, text string) {
	t.Helper()
	ctx := context.Background()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "SET client_encoding = '"+enc+"'"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ExecContext(ctx, text); err != nil {
		t.Fatalf("%s: %q: %v", enc, text, err)
	}
	if _, err := c.ExecContext(ctx, "RESET client_encoding"); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := c.QueryRowContext(ctx, askHidden).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(got, "leak|") || strings.HasSuffix(got, "|0|0") {
		t.Fatalf("%s: %q leaves %q, not what it hides", enc, text, got)
	}
}

// Whichever way a unit sets the client_encoding (for the session, put
// back before its end, or for its transaction, in a string of its own
// or with another statement), what the text hides is seen: the next
// scope on the same backend finds none of it, in every exec mode of
// pgx's.
func TestClientEncodingSplitsText(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	raw := env.Open(t)
	raw.SetMaxIdleConns(0) // what a text left goes with its connection
	ways := []struct {
		name      string
		set, back string // back: "" where the encoding is the transaction's (in Atomic)
	}{
		{"SET", "SET client_encoding = '%s'", "RESET client_encoding"},
		{"SET NAMES", "SET NAMES '%s'", "SET NAMES 'UTF8'"},
		{"set_config", "SELECT set_config('client_encoding', '%s', false)", "SELECT set_config('client_encoding', 'UTF8', false)"},
		{"SET LOCAL", "SET LOCAL client_encoding = '%s'", ""},
		{"set_config local", "SELECT set_config('client_encoding', '%s', true)", ""},
		{"SET LOCAL after another", "SELECT 1; SET LOCAL client_encoding TO '%s'", ""},
	}
	pools := map[string]*dbctx.Pool{}
	for _, mode := range allModes {
		pools[mode] = onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
	}
	for i, tc := range encodingTexts {
		hiddenRuns(t, raw, tc.enc, tc.text)
		for j, w := range ways {
			mode := allModes[(i+j)%len(allModes)]
			got, same := runThenAsk(t, pools[mode], func(ctx context.Context, s *dbctx.Scope) error {
				run := func(ctx context.Context) error {
					if err := exec(fmt.Sprintf(w.set, tc.enc))(ctx, s); err != nil {
						return err
					}
					if err := exec(tc.text)(ctx, s); err != nil {
						return err
					}
					if w.back == "" {
						return nil
					}
					return exec(w.back)(ctx, s)
				}
				if w.back == "" {
					return dbctx.Atomic(ctx, run)
				}
				return run(ctx)
			}, askHidden)
			if got != "|0|0|0" || !same {
				t.Errorf("%s, %s, %s: %q: the next scope sees %q (same backend %v), want |0|0|0 on the same", tc.enc, w.name, mode, tc.text, got, same)
			}
		}
	}
}

// Under TransactionPooling, such a text is refused before it is sent,
// whichever way the transaction set the encoding.
func TestClientEncodingSplitsTextPooling(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	for _, tc := range encodingTexts {
		for _, set := range []string{
			"SET LOCAL client_encoding = '%s'",
			"SELECT set_config('client_encoding', '%s', true)",
			"SELECT 1; SET LOCAL client_encoding TO '%s'",
		} {
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if err := exec(fmt.Sprintf(set, tc.enc))(ctx, s); err != nil {
						return err
					}
					return exec(tc.text)(ctx, s)
				})
			})
			if !errors.Is(err, dbctx.ErrSessionState) {
				t.Errorf("%s, %s: %q: %v, want ErrSessionState", tc.enc, set, tc.text, err)
			}
			var got string
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return s.QueryRowContext(ctx, askHidden).Scan(&got)
			}); err != nil {
				t.Fatal(err)
			}
			if got != "|0|0|0" {
				t.Errorf("%s, %s: %q: the next unit sees %q, want |0|0|0", tc.enc, set, tc.text, got)
			}
		}
	}
}

// pgx's named arguments are rewritten before the text runs ($@a becomes
// $$1, which opens a dollar quote): the text that runs is the one read.
// So through database/sql's methods too, where they come wrapped in a
// sql.NamedArg, whose value pgx's stdlib hands on as the argument.
func TestNamedArgsRewrittenText(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	const q = "SELECT @a::text, $@a, 'x$$, set_config($t$app.x$t$, $t$leak$t$, false) -- '"
	for _, mode := range allModes {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		for name, args := range map[string]any{"NamedArgs": pgx.NamedArgs{"a": "v"}, "StrictNamedArgs": pgx.StrictNamedArgs{"a": "v"}} {
			got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
				rows, err := s.Query(ctx, q, args)
				if err != nil {
					return err
				}
				rows.Close()
				return rows.Err()
			}, "SELECT coalesce(current_setting('app.x', true), '')")
			if got != "" {
				t.Errorf("%s, %s: the next scope sees app.x %q (same backend %v)", mode, name, got, same)
			}
			got, same = runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, q, sql.Named("p", args))
				return err
			}, "SELECT coalesce(current_setting('app.x', true), '')")
			if got != "" {
				t.Errorf("%s, %s in a sql.NamedArg: the next scope sees app.x %q (same backend %v)", mode, name, got, same)
			}
		}
	}
}

// Code in a scope can replace the statements prepared on the connection
// (cache_statement mode: dbscope's dbscope_N, the reset's and the check
// before it for statements PREPAREd in SQL, and pgx's cache, where a
// batch carried a reset) by DEALLOCATE and PREPARE of their names in SQL,
// with statements that do nothing: the reset that binds them must not be
// fooled. Here a DO block replaces the reset's statements (and, in one
// case, the check too) and sets app.x and takes an advisory lock; the
// next scope, through a statement or a batch, must see neither, whichever
// backend it is on.
func TestResetStatementsReplaced(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	// The reset's statements, as the pool sends them one by one.
	resetStmts := "'" + strings.Join(strings.Split(dbctx.DefaultResetSQL, "; "), "', '") + "'"
	replace := `DO $r$ DECLARE r record; BEGIN
	FOR r IN SELECT name, statement FROM pg_prepared_statements WHERE NOT from_sql AND (statement LIKE '%%pg_prepared_statement()%%' OR
		statement IN (` + resetStmts + `)) LOOP
		IF r.statement LIKE '%%pg_prepared_statement()%%' AND NOT %v THEN
			CONTINUE;
		END IF;
		EXECUTE format('DEALLOCATE %%I', r.name);
		EXECUTE format('PREPARE %%I AS SELECT 1', r.name);
	END LOOP;
	PERFORM set_config('app.x', 'leak', false);
	PERFORM pg_advisory_lock(4242);
END $r$`
	const ask = "SELECT concat_ws(' ', current_setting('app.x', true), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()))"
	batch := func(ctx context.Context, s *dbctx.Scope, q string) (string, error) {
		b := &pgx.Batch{}
		b.Queue(q)
		br := s.SendBatch(ctx, b)
		var got string
		var err error
		if strings.HasPrefix(q, "SELECT") {
			err = br.QueryRow().Scan(&got)
		} else {
			_, err = br.Exec()
		}
		return got, errors.Join(err, br.Close())
	}
	for _, check := range []bool{false, true} {
		for _, via := range []string{"a statement", "a batch"} {
			t.Run(fmt.Sprintf("check replaced %v, through %s", check, via), func(t *testing.T) {
				t.Parallel()
				env := newEnv(t)
				mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".log (n int)")
				p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
				// Dirty scopes, each paid for by the next, through a
				// statement and a batch: the reset's statements, and
				// the check, are prepared on the connection, dbscope's
				// and pgx's.
				for _, q := range []string{"SET app.y = '1'", "INSERT INTO log VALUES (1)", "SET app.y = '2'"} {
					if _, same := runThenAsk(t, p, exec(q), "SELECT 1"); !same {
						t.Fatalf("%s: the next scope ran on another backend", q)
					}
				}
				if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := batch(ctx, s, "SET app.y = '3'")
					return err
				}); err != nil {
					t.Fatal(err)
				}
				if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := batch(ctx, s, "SELECT 'warm'")
					return err
				}); err != nil {
					t.Fatal(err)
				}
				if err := p.Do(context.Background(), exec(fmt.Sprintf(replace, check))); err != nil {
					t.Fatal(err)
				}
				var got string
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) (err error) {
					if via == "a batch" {
						got, err = batch(ctx, s, ask)
						return err
					}
					return s.QueryRowContext(ctx, ask).Scan(&got)
				})
				if err != nil {
					t.Fatal(err)
				}
				if strings.TrimSpace(got) != "0" { // app.x empty (see DefaultResetSQL), no lock
					t.Errorf("the next scope sees %q, want no app.x and no lock", got)
				}
			})
		}
	}
}

// A scope that leaves a client_encoding other than UTF8 costs the
// connection: pgx's simple protocol refuses to send anything on it, the
// reset included, so every later scope on it would fail.
func TestClientEncodingCostsTheConnection(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	for _, mode := range allModes {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		for range 2 {
			got, same := runThenAsk(t, p, exec("SET client_encoding = 'LATIN1'"), "SELECT current_setting('client_encoding')")
			if got != "UTF8" || same {
				t.Errorf("%s: the next scope runs with client_encoding %s (same backend %v)", mode, got, same)
			}
		}
	}
}

// A reset that fails (here a statement_timeout of 1 ms the last scope
// set, under which the sweep's check over 5,000 statements PREPAREd in SQL
// is canceled) costs the connection, not the next scope's statement: it
// runs on another connection, and the failing one is used no more.
func TestFailedResetCostsTheConnection(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	for _, mode := range []string{"cache_statement", "exec", "cache_describe", "describe_exec"} {
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
		before := p.Stats()
		got, same := runThenAsk(t, p, func(ctx context.Context, s *dbctx.Scope) error {
			if err := exec("DO $$BEGIN FOR i IN 1..5000 LOOP EXECUTE format('PREPARE p%s AS SELECT %s', i, i); END LOOP; END$$")(ctx, s); err != nil {
				return err
			}
			return exec("SET statement_timeout = 1")(ctx, s)
		}, "SELECT current_setting('statement_timeout') || ' ' || (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)")
		st := p.Stats()
		if got != "0 0" {
			t.Errorf("%s: the next scope sees statement_timeout and statements %q (same backend %v)", mode, got, same)
		}
		if same != (st.Discarded.Reset == before.Discarded.Reset) {
			t.Errorf("%s: same backend %v, %d connections discarded for a failed reset", mode, same, st.Discarded.Reset-before.Discarded.Reset)
		}
	}
}

// In pgx's simple_protocol exec mode pgx puts each argument into the
// text as a quoted literal wherever its own reading of the text finds a
// placeholder, and that reading is not PostgreSQL's: it reads E'…' after
// any word ending in e (a constant typed name, written with no space
// before its quote, is a plain string), and it takes $a$ for a dollar
// quote inside an identifier (x$a$). A $1 that PostgreSQL reads inside a
// string gets the argument put there, whose quotes end the string, and
// the argument's text runs as statements. The next scope on the
// connection must not find what they set.
func TestArgumentPutWhereTheServerReadsNoPlaceholder(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	p := onePoolInMode(t, env, "simple_protocol", dbctx.Options{Logger: quiet()})
	for _, c := range []struct{ query, arg string }{
		{`SELECT name'\'' , $1 ; --'`, "; SET app.tenant TO 7; SELECT "},
		{`SELECT 1 AS x$a$, $a$ $1 $a$`, "$a$; SET app.tenant TO 7; SELECT $a$"},
		{`SELECT 1 AS x$a$, $a$ $1 $a$`, "$a$; SELECT pg_advisory_lock(7); SELECT $a$"},
	} {
		got, same := runThenAsk(t, p, exec(c.query, c.arg),
			"SELECT coalesce(current_setting('app.tenant', true), '') || (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())")
		if got != "0" {
			t.Errorf("%q with %q: the next scope finds %q, want no tenant and no lock (same backend %v)", c.query, c.arg, got, same)
		}
	}
	// Where pgx finds a placeholder only where PostgreSQL reads one
	// (every $ and digit, or a $ and digit in a string both read so), the
	// statement is still clean.
	for _, q := range []string{"SELECT '$' || $1::text", "SELECT $1::text WHERE '$5 off' <> '' -- $2"} {
		before := p.Stats().Resets
		runThenAsk(t, p, exec(q, "x"), "SELECT 'x'")
		if n := p.Stats().Resets - before; n != 0 {
			t.Errorf("%s cost %d resets, want none", q, n)
		}
	}
}

// Under TransactionPooling, a statement where pgx's simple protocol would
// put an argument that PostgreSQL reads no placeholder for is refused
// before anything is sent: behind a pooler, what the argument's text left
// would reach other clients. The same text run in another exec mode, and
// one where pgx and PostgreSQL read a $ and digit in a string alike,
// run.
func TestSplicedRefusedUnderPooling(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePoolInMode(t, env, "simple_protocol", dbctx.Options{TransactionPooling: true, Logger: quiet()})
	const spliced = `SELECT name'\'' , $1 ; --'`
	run := func(q string, args ...any) error {
		return p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.Exec(ctx, q, args...)
			return err
		})
	}
	if err := run(spliced, "; SET app.tenant TO 7; SELECT "); !errors.Is(err, dbctx.ErrSessionState) {
		t.Errorf("%s with an argument: %v, want ErrSessionState", spliced, err)
	}
	var got string
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.tenant', true), '')").Scan(&got)
	}); err != nil || got != "" {
		t.Errorf("after the refusal the session's app.tenant is %q (%v), want none", got, err)
	}
	// In the extended protocol PostgreSQL gets the argument apart: run
	// (and refused by PostgreSQL, whose reading has no $1 there).
	if err := run(spliced, pgx.QueryExecModeExec, "x"); err == nil || errors.Is(err, dbctx.ErrSessionState) {
		t.Errorf("%s in exec mode: %v, want PostgreSQL's own refusal", spliced, err)
	}
	if err := run("SELECT $1::text WHERE '$5 off' <> ''", "x"); err != nil {
		t.Errorf("a $ and digit in a string both read alike: %v", err)
	}
	// Read otherwise in an encoding pgx's simple protocol never runs in
	// (client_encoding UTF8 alone): pgx and PostgreSQL read it alike.
	if err := run("SELECT E'ソ\\'s' || $1::text", "x"); err != nil {
		t.Errorf("an E'…' of UTF-8 text with an escaped quote: %v", err)
	}
}
