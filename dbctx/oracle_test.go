package dbctx

import (
	"context"
	"database/sql"
	"flag"
	"math"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/pgcorpus"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sessiontest"
)

// oracle runs statements on fresh sessions and asks PostgreSQL whether
// they changed the session.
type oracle struct {
	db *sql.DB
	*sessiontest.Env
}

func newOracle(tb testing.TB) *oracle {
	env := pgtest.New(tb)
	ctx := context.Background()
	se, cleanup, err := sessiontest.Setup(ctx, env.Admin(), env.Schema())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cleanup)
	// Fuzzed statements may sleep: bound them.
	dsn, err := pgserver.WithParams(env.DSN(), "statement_timeout", "2s")
	if err != nil {
		tb.Fatal(err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		tb.Fatal(err)
	}
	db.SetMaxIdleConns(0) // a fresh session for every statement
	tb.Cleanup(func() { db.Close() })
	return &oracle{db: db, Env: se}
}

// run runs stmt on a fresh session, rolls back what it left open as a
// boundary does, and describes how the session changed ("" if not).
func (o *oracle) run(tb testing.TB, stmt string) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := o.db.Conn(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	before, err := o.Probe(ctx, c)
	if err != nil {
		tb.Fatal(err)
	}
	c.ExecContext(ctx, stmt) // failing or not, it may leave state
	if _, err := c.ExecContext(ctx, "ROLLBACK"); err != nil {
		tb.Fatalf("%q: rolling back: %v", stmt, err)
	}
	after, err := o.Probe(ctx, c)
	if err != nil {
		tb.Fatalf("%q: %v", stmt, err)
	}
	return sessiontest.Diff(before, after)
}

// PostgreSQL is the oracle of the classifier: a statement it calls clean
// must leave the session as it found it. The corpus's statements that
// leave state must be seen to (else the probe is blind), and those that
// leave none must be classified clean (else they cost a reset).
func TestClassifyOracle(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive statements or scopes to share one server session")
	o := newOracle(t)
	for _, c := range sessiontest.Cases {
		stmt := o.Statement(c)
		k := classify(stmt)
		diff := o.run(t, stmt)
		switch {
		case diff != "" && k&kindState == 0:
			t.Errorf("%s: %q is classified clean but changed the session: %s", c.Name, stmt, diff)
		case prepared(diff) && k&kindCode == 0:
			t.Errorf("%s: %q prepared a statement, but the reset would not look for it: %s", c.Name, stmt, diff)
		case c.Leaves != sessiontest.None && diff == "":
			t.Errorf("%s: the probe sees no change after %q", c.Name, stmt)
		case c.Leaves == sessiontest.None && diff != "":
			t.Errorf("%s: %q changed the session: %s", c.Name, stmt, diff)
		case c.Leaves == sessiontest.None && k&kindState != 0:
			t.Errorf("%s: %q is classified %s: it would cost a reset", c.Name, stmt, kindString(k))
		}
	}
}

// The splits of the client-only encodings are PostgreSQL's: a byte above
// ASCII and what follows it (a backslash's byte, a bracket's, a digit, a
// byte above ASCII and a digit) make as many characters for PostgreSQL,
// where it converts them at all, as charLen says; and where the byte
// after it is a quote, a newline or a $, PostgreSQL never takes that
// byte into a character (splitMatters reads no split that does).
func TestSplitsAsPostgreSQL(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs its temporary function on one server session")
	env := pgtest.New(t)
	ctx := context.Background()
	c, err := env.Open(t).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, `CREATE FUNCTION pg_temp.chars(b bytea, enc text) RETURNS int LANGUAGE plpgsql AS $$
		BEGIN
			RETURN length(convert_from(b, enc));
		EXCEPTION WHEN others THEN
			RETURN -1; -- not a text of the encoding's
		END $$`); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct {
		name  string
		split mbSplit
	}{
		{"SJIS", splitSJIS}, {"SHIFT_JIS_2004", splitSJIS}, {"BIG5", splitTwo}, {"GBK", splitTwo},
		{"UHC", splitTwo}, {"GB18030", splitGB18030}, {"JOHAB", splitJOHAB},
	} {
		for _, tail := range []string{"\\", "[", "|", "A", "\x30\x81\x30", "\xa1\xa1", "'", "\n", "$"} {
			var got string
			if err := c.QueryRowContext(ctx, `SELECT string_agg(pg_temp.chars(set_byte('\x00'::bytea || $1::bytea, 0, l), $2)::text, ',' ORDER BY l)
				FROM generate_series(128, 255) l`, []byte(tail), e.name).Scan(&got); err != nil {
				t.Fatal(err)
			}
			for i, n := range strings.Split(got, ",") {
				text := string([]byte{byte(128 + i)}) + tail
				want := 0
				for j := 0; j < len(text); j += e.split.charLen(text, j) {
					want++
				}
				switch pg, _ := strconv.Atoi(n); {
				case pg < 0:
				case tail[0] < 0x40 && !isDigit(tail[0]) && pg == 1:
					t.Errorf("%s: PostgreSQL takes %q into one character", e.name, text)
				case pg != want:
					t.Errorf("%s: %q is %d characters for PostgreSQL, %d in split %d", e.name, text, pg, want, e.split)
				}
			}
		}
	}
}

// FuzzClassify runs what the classifier calls clean against PostgreSQL,
// which must find the session unchanged. Without -fuzz it runs the
// corpus; with it (go test -fuzz FuzzClassify ./dbctx) it looks for a
// statement that fools the classifier.
func FuzzClassify(f *testing.F) {
	pgtest.SkipPooled(f, "needs consecutive statements or scopes to share one server session")
	for _, c := range sessiontest.Cases {
		f.Add(c.SQL)
	}
	// Texts that hide statements under a client-only client_encoding
	// (TestClassifyClientEncodings): the oracle's sessions speak UTF8,
	// which refuses them, but the fuzzer mutates from them.
	f.Add("SELECT E'\xb1\x95\x5c'; LISTEN c; --'")
	f.Add("SELECT $\x95[$ ' $\x95[$; SELECT set_config('a.b', 'c', false); --'")
	if fl := flag.Lookup("test.fuzz"); fl != nil && fl.Value.String() != "" {
		// Fuzzing: start from the statements of PostgreSQL's regression
		// SQL too (see TestCorpusOracle), each judged by PostgreSQL first:
		// an even sample of them, as the fuzzer runs every seed before it
		// mutates any (all 34k take about five minutes).
		for _, q := range sample(corpusStatements(), fuzzSeeds(f)) {
			f.Add(q)
		}
	}
	o := newOracle(f)
	f.Fuzz(func(t *testing.T, stmt string) {
		k := classify(stmt)
		if k&(kindCode|kindPoison) != 0 {
			return // the session will be reset and swept, or closed
		}
		// What the classifier knows cannot PREPARE; and what it calls
		// clean must change nothing.
		diff := o.run(t, stmt)
		switch {
		case k&kindState == 0 && diff != "":
			t.Fatalf("%q is classified clean but changed the session: %s", stmt, diff)
		case prepared(diff):
			t.Fatalf("%q prepared a statement, but the reset would not look for it: %s", stmt, diff)
		}
	})
}

// fuzzSeeds is how many corpus statements seed FuzzClassify:
// $DBSCOPE_FUZZ_SEEDS, all of them where it is "all", else 2,000.
func fuzzSeeds(tb testing.TB) int {
	switch v := os.Getenv("DBSCOPE_FUZZ_SEEDS"); v {
	case "":
		return 2000
	case "all":
		return math.MaxInt
	default:
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			tb.Fatalf("DBSCOPE_FUZZ_SEEDS=%q: want a count or all", v)
		}
		return n
	}
}

// sample returns n of list, evenly spaced (all of it if it has no more).
func sample(list []string, n int) []string {
	if len(list) <= n {
		return list
	}
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, list[i*len(list)/n])
	}
	return out
}

// corpusStatements returns the query strings of the corpus (see package
// pgcorpus), each once; none without a corpus.
func corpusStatements() []string {
	dir := pgcorpus.Dir()
	if dir == "" {
		return nil
	}
	files, err := pgcorpus.Files(dir)
	if err != nil {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, f := range files {
		s := pgcorpus.NewScript(f.SQL)
		for {
			st, ok := s.Next(true)
			if !ok {
				break
			}
			if st.SQL != "" && len(st.SQL) <= 2<<10 && !seen[st.SQL] {
				seen[st.SQL] = true
				out = append(out, st.SQL)
			}
		}
	}
	return out
}

// prepared reports whether a probe's diff shows a statement PREPAREd.
func prepared(diff string) bool { return strings.Contains(diff, `before "prepared: `) }
