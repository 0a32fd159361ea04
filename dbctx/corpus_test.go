package dbctx

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/pgcorpus"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
)

// The corpus oracle lets PostgreSQL judge the classifier over its own
// regression SQL (see package pgcorpus): each script runs as written, in
// order, one session per script, in a throwaway cluster (the scripts
// create roles and databases, ALTER SYSTEM…), and after each query string
// outside a transaction block, and at the end of each block, the session
// is fingerprinted: every setting whose source is the session, the
// current and session user, its advisory locks, temporary objects,
// listened channels, holdable cursors, statements PREPAREd in SQL, and
// its sequence state (lastval, and currval of every sequence). A unit (a
// string, or a block) left state where the fingerprint holds something
// that was not there before it and that a fresh session does not hold.
//
// Required, apart from the exceptions named in the package doc's "Not
// seen" paragraph (see corpusExceptions):
//   - no miss: a unit that left state was classified kindState;
//   - under transaction pooling, a unit that left session-level state
//     other than sequence state was classified kindSession.
//
// It reports the over-reset: units that left nothing but were classified
// kindState.
//
//	go test -run TestCorpusOracle -v ./dbctx
//
// finds the corpus as pgcorpus.Dir does ($DBSCOPE_CORPUS) and skips
// without one (fails under CI=true). DBSCOPE_CORPUS_FILES=a,b runs only
// the scripts whose names contain one of those words.
func TestCorpusOracle(t *testing.T) {
	files := corpusFiles(t)
	o := startCorpusCluster(t, corpusWorkers())
	tally := newCorpusTally(t.Errorf)
	start := time.Now()
	o.run(t, files, corpusSample(), tally)
	tally.report(t.Logf, time.Since(start))
}

// TestCorpusOracleCatches is the oracle's mutation check: with a class
// of misreading put back into the classifier (the classes of issue 22),
// the oracle, run on a few scripts and a sweep of a few keywords, reports
// misses.
func TestCorpusOracleCatches(t *testing.T) {
	files := slices.DeleteFunc(corpusFiles(t), func(f pgcorpus.File) bool {
		switch f.Name {
		case "pg_regress/guc.sql", "pg_regress/temp.sql", "pg_regress/prepare.sql":
			return false
		}
		return true
	})
	o := startCorpusCluster(t, 1)
	o.keywords = []string{"local", "session", "transaction", "hold", "temp", "analyze", "true", "foo"}
	first := func(q string, words ...string) bool {
		toks := pgcorpus.Tokens(q, true)
		for i, w := range words {
			if i >= len(toks) || !strings.EqualFold(toks[i].Text, w) {
				return false
			}
		}
		return true
	}
	for i, c := range []struct {
		class  string
		broken func(string) queryKind
	}{
		{"SET local.x read as SET LOCAL", func(q string) queryKind {
			if first(q, "set", "local") || first(q, "set", "transaction") {
				return 0
			}
			return classify(q)
		}},
		{"PREPARE transaction AS read as PREPARE TRANSACTION", func(q string) queryKind {
			if first(q, "prepare", "transaction") {
				return kindOnce | kindAlone
			}
			return classify(q)
		}},
		{"EXPLAIN ANALYZE read as running nothing", func(q string) queryKind {
			if first(q, "explain") {
				return 0
			}
			return classify(q)
		}},
		{"standard_conforming_strings on only", func(q string) queryKind { return classifyAs(q, false, splitBytes) }},
		{`"pg_temp" quoted not seen`, func(q string) queryKind {
			if strings.Contains(q, `"pg_temp`) {
				return classify(q) &^ kindSession
			}
			return classify(q)
		}},
	} {
		o.classify = c.broken
		o.databases(t, 1, strconv.Itoa(i))
		var found []string
		tally := newCorpusTally(func(format string, args ...any) {
			if len(found) < 3 {
				found = append(found, fmt.Sprintf(format, args...))
			}
		})
		o.run(t, files, 8, tally)
		if tally.misses+tally.tpMisses == 0 {
			t.Errorf("%s: the oracle saw no miss", c.class)
		} else {
			t.Logf("%s: %d misses, %d pooling misses, such as %s", c.class, tally.misses, tally.tpMisses, found[0])
		}
	}
}

// corpusFiles returns the corpus's scripts, or skips the test where there
// is no corpus (fails under CI=true).
func corpusFiles(t *testing.T) []pgcorpus.File {
	t.Helper()
	if !corpusSelected() {
		t.Skip("minutes long: run it alone (go test -run TestCorpusOracle ./dbctx), as .ci/run does")
	}
	dir := pgcorpus.Dir()
	if dir == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("no corpus of PostgreSQL's regression SQL: set %s (see internal/pgcorpus)", pgcorpus.Env)
		}
		t.Skipf("no corpus of PostgreSQL's regression SQL: set %s to run the corpus oracle", pgcorpus.Env)
	}
	files, err := pgcorpus.Files(dir)
	if err != nil {
		t.Fatal(err)
	}
	if only := os.Getenv("DBSCOPE_CORPUS_FILES"); only != "" {
		files = slices.DeleteFunc(files, func(f pgcorpus.File) bool {
			for w := range strings.SplitSeq(only, ",") {
				if strings.Contains(f.Name, w) {
					return false
				}
			}
			return true
		})
	}
	return files
}

// corpusSelected reports whether -run names the corpus oracle, or
// DBSCOPE_CORPUS_ORACLE=1 asks for it.
func corpusSelected() bool {
	if os.Getenv("DBSCOPE_CORPUS_ORACLE") == "1" {
		return true
	}
	f := flag.Lookup("test.run")
	return f != nil && strings.Contains(f.Value.String(), "CorpusOracle")
}

// corpusSample is how many of the units that left nothing one is
// mutated: 1 in DBSCOPE_CORPUS_SAMPLE (default 16; 1 mutates every unit,
// a run of an hour or more). Every unit that left state is mutated.
func corpusSample() int {
	if n, err := strconv.Atoi(os.Getenv("DBSCOPE_CORPUS_SAMPLE")); err == nil && n > 0 {
		return n
	}
	return 16
}

// corpusWorkers is how many scripts run at once, each worker in a
// database of its own: DBSCOPE_CORPUS_WORKERS, default 2.
func corpusWorkers() int {
	if n, err := strconv.Atoi(os.Getenv("DBSCOPE_CORPUS_WORKERS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// corpusCluster is the throwaway cluster the oracle runs in.
type corpusCluster struct {
	url      string                 // of database postgres
	dbs      []string               // one database per worker
	classify func(string) queryKind // what is judged
	keywords []string               // of the sweep (nil: every keyword)
}

// fingerprintSQL creates what reads a session's state, as the bootstrap
// superuser whatever role the session has taken, with pg_catalog first.
const fingerprintSQL = `
CREATE SCHEMA dbscope_oracle;
GRANT USAGE ON SCHEMA dbscope_oracle TO PUBLIC;
CREATE FUNCTION dbscope_oracle.fingerprint(prev jsonb, custom text[]) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r text;
	s oid;
	v text;
	n text;
BEGIN
	r := concat_ws(E'\n',
		(SELECT string_agg('setting ' || name || E'\t' || setting, E'\n' ORDER BY name)
			FROM pg_settings WHERE source = 'session'
				-- Set anew at the start of every transaction.
				AND name NOT IN ('transaction_isolation', 'transaction_read_only', 'transaction_deferrable')),
		'user session' || E'\t' || session_user,
		(SELECT string_agg('lock ' || classid || ':' || objid || ':' || objsubid || ':' || mode || E'\t', E'\n' ORDER BY 1)
			FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
		-- A session has a temporary schema from its first temporary object on.
		(SELECT string_agg('temp ' || relname || E'\t' || relkind::text || ' ' || oid, E'\n' ORDER BY relname)
			FROM pg_class WHERE pg_my_temp_schema() <> 0 AND relnamespace = pg_my_temp_schema()),
		(SELECT string_agg('temp function ' || oid::regprocedure || E'\t', E'\n' ORDER BY 1)
			FROM pg_proc WHERE pg_my_temp_schema() <> 0 AND pronamespace = pg_my_temp_schema()),
		(SELECT string_agg('temp type ' || typname || E'\t' || oid, E'\n' ORDER BY 1)
			FROM pg_type WHERE pg_my_temp_schema() <> 0 AND typnamespace = pg_my_temp_schema()
				AND typrelid = 0 AND typelem = 0),
		(SELECT string_agg('listen ' || c || E'\t', E'\n' ORDER BY 1) FROM pg_listening_channels() c),
		(SELECT string_agg('cursor ' || name || E'\t' || statement, E'\n' ORDER BY 1) FROM pg_cursors WHERE is_holdable),
		(SELECT string_agg('prepared ' || name || E'\t' || statement, E'\n' ORDER BY 1)
			FROM pg_prepared_statements WHERE from_sql));
	-- Custom settings are not in pg_settings: those whose names the
	-- session's statements spelled. Reset, one reads as ''.
	FOREACH n IN ARRAY custom LOOP
		v := current_setting(n, true);
		IF v <> '' THEN
			r := r || E'\nsetting ' || n || E'\t' || v;
		END IF;
	END LOOP;
	BEGIN
		r := r || E'\nsequence lastval\t' || lastval();
	EXCEPTION WHEN OTHERS THEN
	END;
	-- currval of a sequence that had one, or whose value changed since the
	-- last fingerprint (prev: "disk <oid>" → its value then, "sequence
	-- <oid>" → its currval then): nextval and setval write it.
	FOR s, v IN SELECT oid, coalesce(pg_sequence_last_value(oid)::text, '-') FROM pg_class
			WHERE relkind = 'S' AND (relpersistence <> 't' OR relnamespace = pg_my_temp_schema()) LOOP
		r := r || E'\ndisk ' || s || E'\t' || v;
		IF prev ? ('sequence ' || s) OR (prev ->> ('disk ' || s)) IS DISTINCT FROM v THEN
			BEGIN
				r := r || E'\nsequence ' || s || E'\t' || currval(s);
			EXCEPTION WHEN OTHERS THEN
			END;
		END IF;
	END LOOP;
	RETURN r;
END $$;`

// probeQuery asks a session for its fingerprint, given the last one's
// sequence items as a JSON object and the names of custom settings.
const probeQuery = "SELECT 'user current' || E'\\t' || current_user || E'\\n' || dbscope_oracle.fingerprint(%s, %s)"

func startCorpusCluster(t *testing.T, workers int) *corpusCluster {
	t.Helper()
	srv, err := pgserver.StartCluster(context.Background(), t.Logf, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	url := srv.URL
	o := &corpusCluster{url: url, classify: classify}
	o.databases(t, workers, "")
	return o
}

// databases makes the databases the oracle runs in, named with tag: as
// pg_regress makes its database, once per worker and once for the sweep of
// keywords.
func (o *corpusCluster) databases(t *testing.T, workers int, tag string) {
	t.Helper()
	ctx := context.Background()
	pc, err := pgconn.Connect(ctx, o.url)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	o.dbs = nil
	for i := range workers + 1 {
		db := fmt.Sprintf("regression%s_%d", tag, i)
		if i == workers {
			db = "dbscope_sweep" + tag
		}
		for _, q := range []string{
			"CREATE DATABASE " + db + " TEMPLATE template0",
			"ALTER DATABASE " + db + " SET lc_messages TO 'C'",
			"ALTER DATABASE " + db + " SET timezone TO 'PST8PDT'",
			"ALTER DATABASE " + db + " SET datestyle TO 'Postgres, MDY'",
			"ALTER DATABASE " + db + " SET intervalstyle TO 'postgres_verbose'",
		} {
			if _, err := pc.Exec(ctx, q).ReadAll(); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		o.dbs = append(o.dbs, db)
		s, err := o.connect(ctx, db, false, "5s")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.pc.Exec(ctx, fingerprintSQL).ReadAll(); err != nil {
			t.Fatal(err)
		}
		s.pc.Close(ctx)
	}
}

// session is one session of the oracle, fingerprinted.
type oracleSession struct {
	pc     *pgconn.PgConn
	fresh  fingerprint     // of a session just connected
	last   fingerprint     // the last one taken
	custom map[string]bool // names of custom settings its statements spelled
}

// customName matches what may name a custom setting: two or more names
// joined by dots, quoted or not, in a statement or in a string.
var customName = regexp.MustCompile(`(?:"[^"]+"|[A-Za-z_][A-Za-z_0-9$]*)(?:\.(?:"[^"]+"|[A-Za-z_][A-Za-z_0-9$]*))+`)

// spelled notes the names of custom settings sql may set.
func (s *oracleSession) spelled(sql string) {
	if s.custom == nil {
		s.custom = map[string]bool{}
	}
	for _, m := range customName.FindAllString(sql, -1) {
		parts := strings.Split(m, ".")
		for i, p := range parts {
			if strings.HasPrefix(p, `"`) {
				parts[i] = strings.Trim(p, `"`)
			} else {
				parts[i] = strings.ToLower(p)
			}
		}
		s.custom[strings.Join(parts, ".")] = true
	}
}

// corpusStepTimeout bounds one query string; the server's
// statement_timeout is set lower, so this only catches what it cannot.
const corpusStepTimeout = 60 * time.Second

// connect opens a session on database db; fingerprint says whether to
// take its first fingerprint (the fresh session's); it waits for a lock at
// most lockTimeout.
func (o *corpusCluster) connect(ctx context.Context, db string, fingerprint bool, lockTimeout string) (*oracleSession, error) {
	cfg, err := pgconn.ParseConfig(o.url)
	if err != nil {
		return nil, err
	}
	cfg.Database = db
	cfg.RuntimeParams["statement_timeout"] = "20s"
	cfg.RuntimeParams["lock_timeout"] = lockTimeout
	cfg.RuntimeParams["application_name"] = "dbscope_corpus"
	// A canceled step asks the server to cancel, and keeps the session.
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &oracleSession{pc: pc}
	if fingerprint {
		if s.fresh, err = s.fingerprint(ctx); err != nil {
			pc.Close(ctx)
			return nil, err
		}
	}
	return s, nil
}

// exec sends sql as one simple Query and reads every answer, sending
// copyData() where the server asks for COPY data. It returns the first
// error the server reported, or what broke the connection (then
// s.pc.IsClosed()).
func (s *oracleSession) exec(ctx context.Context, sql string, copyData func() string) error {
	ctx, cancel := context.WithTimeout(ctx, corpusStepTimeout)
	defer cancel()
	fe := s.pc.Frontend()
	fe.Send(&pgproto3.Query{String: sql})
	if err := fe.Flush(); err != nil {
		s.pc.Close(ctx)
		return err
	}
	var first error
	for {
		msg, err := s.pc.ReceiveMessage(ctx)
		if err != nil {
			s.pc.Close(context.Background())
			return err
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			if first == nil {
				first = pgconn.ErrorResponseToPgError(m)
			}
		case *pgproto3.CopyInResponse:
			fe.Send(&pgproto3.CopyData{Data: []byte(copyData())})
			fe.Send(&pgproto3.CopyDone{})
			if err := fe.Flush(); err != nil {
				s.pc.Close(ctx)
				return err
			}
		case *pgproto3.CopyBothResponse:
			fe.Send(&pgproto3.CopyFail{Message: "not here"})
			if err := fe.Flush(); err != nil {
				s.pc.Close(ctx)
				return err
			}
		case *pgproto3.ReadyForQuery:
			return first
		}
	}
}

// fingerprint is what a session holds, item by item: "setting
// search_path" → "public".
type fingerprint map[string]string

func (s *oracleSession) fingerprint(ctx context.Context) (fingerprint, error) {
	ctx, cancel := context.WithTimeout(ctx, corpusStepTimeout)
	defer cancel()
	prev := map[string]string{}
	for k, v := range s.last {
		if strings.HasPrefix(k, "disk ") || strings.HasPrefix(k, "sequence ") {
			prev[k] = v
		}
	}
	js, _ := json.Marshal(prev)
	names := make([]string, 0, len(s.custom))
	for n := range s.custom {
		names = append(names, `"`+strings.ReplaceAll(strings.ReplaceAll(n, `\`, `\\`), `"`, `\"`)+`"`)
	}
	res, err := s.pc.Exec(ctx, fmt.Sprintf(probeQuery, quoteString(string(js)), quoteString("{"+strings.Join(names, ",")+"}"))).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 {
		return nil, errors.New("fingerprint: no row")
	}
	f := fingerprint{}
	for line := range strings.SplitSeq(string(res[0].Rows[0][0]), "\n") {
		k, v, _ := strings.Cut(line, "\t")
		f[k] = v
	}
	s.last = f
	return f, nil
}

// left lists what after holds that before did not and a fresh session
// does not: state a unit left. What it removed (a CLOSE, a DISCARD) is
// not state.
func (s *oracleSession) left(before, after fingerprint) []string {
	var out []string
	for k, v := range after {
		if strings.HasPrefix(k, "disk ") {
			continue // the cluster's, not the session's
		}
		if b, ok := before[k]; ok && b == v {
			continue
		}
		if f, ok := s.fresh[k]; ok && f == v {
			continue
		}
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// stateClass is what kind of state an item of a fingerprint is.
func stateClass(item string) string {
	c, _, _ := strings.Cut(item, " ")
	return c
}

// A corpusUnit is a query string, or the strings of a transaction block.
type corpusUnit struct {
	file string
	line int
	sqls []string
	kind queryKind
	left []string // what PostgreSQL says it left
	axis string   // of a mutant
	// The session held temporary objects before it.
	hadTemp bool
}

func (u *corpusUnit) String() string {
	q := strings.Join(u.sqls, "\n")
	if len(q) > 300 {
		q = q[:300] + "…"
	}
	where := fmt.Sprintf("%s:%d", u.file, u.line)
	if u.axis != "" {
		where += " mutant (" + u.axis + ")"
	}
	return fmt.Sprintf("%s (%s): %q left %s", where, kindString(u.kind), q, strings.Join(u.left, ", "))
}

// run runs the scripts and the sweep of keywords, workers at a time.
func (o *corpusCluster) run(t *testing.T, files []pgcorpus.File, sample int, tally *corpusTally) {
	type job struct {
		name string
		run  func(db string)
	}
	jobs := make(chan job)
	var wg sync.WaitGroup
	for i := range len(o.dbs) - 1 {
		wg.Go(func() {
			for j := range jobs {
				start := time.Now()
				j.run(o.dbs[i])
				if os.Getenv("DBSCOPE_CORPUS_PROGRESS") != "" {
					t.Logf("%s: %v", j.name, time.Since(start).Round(time.Millisecond))
				}
			}
		})
	}
	for _, f := range files {
		jobs <- job{f.Name, func(db string) { o.runFile(t, db, f, sample, tally) }}
	}
	sweep := pgcorpus.KeywordSweep(o.sweepKeywords())
	const chunks = 8
	for i := range chunks {
		part := slices.Clip(sweep[i*len(sweep)/chunks : (i+1)*len(sweep)/chunks])
		jobs <- job{fmt.Sprintf("sweep of keywords, part %d", i+1), func(string) { o.sweep(t, part, tally) }}
	}
	close(jobs)
	wg.Wait()
}

// sweepKeywords returns the keywords of the sweep: o.keywords, or every
// keyword of PostgreSQL's grammar.
func (o *corpusCluster) sweepKeywords() []string {
	if o.keywords != nil {
		return o.keywords
	}
	var kws []string
	for _, list := range []string{reservedKeywords, colNameKeywords, typeFuncKeywords, unreservedKeywords} {
		kws = append(kws, strings.Fields(list)...)
	}
	return kws
}

// sweep runs mutants of pgcorpus.KeywordSweep on a session of their own,
// in the sweep's database.
func (o *corpusCluster) sweep(t *testing.T, mutants []pgcorpus.Mutant, tally *corpusTally) {
	ms, err := o.mutantSession(context.Background(), o.dbs[len(o.dbs)-1])
	if err != nil {
		t.Error(err)
		return
	}
	defer ms.close()
	// The session's own temporary schema, by the names the catalog has.
	ctx := context.Background()
	ms.s.exec(ctx, "CREATE TEMP TABLE dbscope_t (x int); DROP TABLE dbscope_t", nil)
	if res, err := ms.s.pc.Exec(ctx, "SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()").ReadAll(); err == nil && len(res[0].Rows) == 1 {
		n := string(res[0].Rows[0][0])
		toast := strings.Replace(n, "pg_temp", "pg_toast_temp", 1)
		mutants = append(mutants, pgcorpus.TempSchema(n, strings.ToUpper(n), `"`+n+`"`, toast, `"`+toast+`"`)...)
	}
	if ms.reset(ctx) != nil {
		return
	}
	for i, m := range mutants {
		ms.run(t, m, "sweep", i, "", tally)
	}
}

// runFile runs one script in a session of its own (a new one at each \c,
// and after a step that broke the session), and mutants of its
// statements in another session, right after each.
func (o *corpusCluster) runFile(t *testing.T, db string, f pgcorpus.File, sample int, tally *corpusTally) {
	ctx := context.Background()
	s, err := o.connect(ctx, db, true, "5s")
	if err != nil {
		t.Errorf("%s: %v", f.Name, err)
		return
	}
	defer func() { s.pc.Close(ctx) }()
	ms, err := o.mutantSession(ctx, db)
	if err != nil {
		t.Errorf("%s: %v", f.Name, err)
		return
	}
	defer ms.close()
	r := rand.New(rand.NewPCG(1, uint64(len(f.Name))<<32|uint64(len(f.SQL))))
	before := s.fresh
	script := pgcorpus.NewScript(f.SQL)
	u := corpusUnit{file: f.Name}
	for n := 0; ; n++ {
		std := s.pc.ParameterStatus("standard_conforming_strings") != "off"
		step, ok := script.Next(std)
		if !ok {
			break
		}
		if step.Reconnect || s.pc.IsClosed() {
			s.pc.Close(ctx)
			if s, err = o.connect(ctx, db, true, "5s"); err != nil {
				t.Errorf("%s:%d: %v", f.Name, step.Line, err)
				return
			}
			before, u = s.fresh, corpusUnit{file: f.Name}
			if step.Reconnect {
				continue
			}
		}
		if len(u.sqls) == 0 {
			u.line = step.Line
		}
		u.sqls = append(u.sqls, step.SQL)
		u.kind |= o.classify(step.SQL)
		s.spelled(step.SQL)
		s.exec(ctx, step.SQL, script.CopyData)
		if s.pc.IsClosed() {
			tally.count(func() { tally.lost++ })
			u = corpusUnit{file: f.Name}
			continue
		}
		if s.pc.TxStatus() != 'I' {
			continue
		}
		after, err := s.fingerprint(ctx)
		if err != nil {
			t.Errorf("%s:%d: fingerprint: %v", f.Name, step.Line, err)
			s.pc.Close(ctx)
			continue
		}
		u.left, u.hadTemp = s.left(before, after), hasTemp(before)
		tally.judge(u, false)
		if len(u.sqls) == 1 && (len(u.left) > 0 || r.IntN(sample) == 0) {
			var mutants []pgcorpus.Mutant
			mutants = append(mutants, pgcorpus.Wrap(step.SQL, n, r)...)
			mutants = append(mutants, pgcorpus.Variants(step.SQL, std, r)...)
			mutants = append(mutants, pgcorpus.ModeSwitch(step.SQL)...)
			if len(u.left) == 0 {
				// Of one that left nothing, a few.
				r.Shuffle(len(mutants), func(i, j int) { mutants[i], mutants[j] = mutants[j], mutants[i] })
				mutants = mutants[:min(len(mutants), 3)]
			}
			for _, m := range mutants {
				ms.run(t, m, f.Name, step.Line, after["setting search_path"], tally)
			}
		}
		before, u = after, corpusUnit{file: f.Name}
	}
}

// mutantSession is where mutants run: a session kept as fresh as a
// session just connected, so that what a mutant leaves is its own.
type mutantSession struct {
	o    *corpusCluster
	db   string
	s    *oracleSession
	path string // the search_path set in it ("": none)
}

// mutantLockTimeout bounds a mutant's wait for the locks its script's
// session holds (its advisory locks, say): the mutant then fails, as it
// may.
const mutantLockTimeout = "100ms"

func (o *corpusCluster) mutantSession(ctx context.Context, db string) (*mutantSession, error) {
	s, err := o.connect(ctx, db, true, mutantLockTimeout)
	if err != nil {
		return nil, err
	}
	return &mutantSession{o: o, db: db, s: s}, nil
}

func (m *mutantSession) close() { m.s.pc.Close(context.Background()) }

// run runs mutant mu, from the script file at line, with the script's
// search_path, and judges it.
func (m *mutantSession) run(t *testing.T, mu pgcorpus.Mutant, file string, line int, path string, tally *corpusTally) {
	ctx := context.Background()
	if path != m.path {
		if err := m.s.exec(ctx, "SET search_path = "+path, nil); err != nil && !m.s.pc.IsClosed() {
			path = "" // a schema of the script's session
		}
		m.path = path
		if m.reset(ctx) != nil {
			return
		}
	}
	before := m.s.last
	u := corpusUnit{file: file, line: line, sqls: mu.SQL, axis: mu.Axis}
	for _, q := range mu.SQL {
		u.kind |= m.o.classify(q)
		m.s.spelled(q)
		m.s.exec(ctx, q, func() string { return "" })
		if m.s.pc.IsClosed() {
			m.reconnect(ctx)
			return
		}
	}
	if m.s.pc.TxStatus() != 'I' {
		// As a boundary does.
		if m.s.exec(ctx, "ROLLBACK", nil); m.s.pc.IsClosed() {
			m.reconnect(ctx)
			return
		}
	}
	after, err := m.s.fingerprint(ctx)
	if err != nil {
		m.reconnect(ctx)
		return
	}
	u.left, u.hadTemp = m.s.left(before, after), hasTemp(before)
	tally.judge(u, true)
	if len(u.left) > 0 || !maps.Equal(withoutDisk(before), withoutDisk(after)) {
		m.path = ""
		m.reset(ctx)
	}
}

// reset makes the session fresh again, with the search_path wanted.
func (m *mutantSession) reset(ctx context.Context) error {
	if err := m.s.exec(ctx, "DISCARD ALL", nil); err != nil && m.s.pc.IsClosed() {
		return m.reconnect(ctx)
	}
	if m.path != "" {
		m.s.exec(ctx, "SET search_path = "+m.path, nil)
	}
	f, err := m.s.fingerprint(ctx)
	if err != nil {
		return m.reconnect(ctx)
	}
	if m.path == "" && len(m.s.left(m.s.fresh, f)) > 0 {
		return m.reconnect(ctx) // what DISCARD ALL cannot undo
	}
	return nil
}

func (m *mutantSession) reconnect(ctx context.Context) error {
	m.s.pc.Close(ctx)
	s, err := m.o.connect(ctx, m.db, true, mutantLockTimeout)
	if err != nil {
		return err
	}
	m.s, m.path = s, ""
	return nil
}

func withoutDisk(f fingerprint) fingerprint {
	out := fingerprint{}
	for k, v := range f {
		if !strings.HasPrefix(k, "disk ") {
			out[k] = v
		}
	}
	return out
}

// corpusTally counts what the oracle saw.
type corpusTally struct {
	mu                    sync.Mutex
	errorf                func(format string, args ...any) // where misses go
	units, leftState      int
	clean, overReset      int
	mutants, mLeft        int
	misses, tpMisses      int
	excused               map[string]int
	lost                  int
	overResetByPrefix     map[string]int
	excusedByPrefix       map[string]int
	mutantsByAxis         map[string]int
	explain, explainDirty int // corpus units of EXPLAIN that left nothing, and those classified dirty
}

func newCorpusTally(errorf func(format string, args ...any)) *corpusTally {
	return &corpusTally{errorf: errorf, excused: map[string]int{}, overResetByPrefix: map[string]int{},
		excusedByPrefix: map[string]int{}, mutantsByAxis: map[string]int{}}
}

func (c *corpusTally) count(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f()
}

// judge compares what PostgreSQL says u left with how it was classified.
func (c *corpusTally) judge(u corpusUnit, mutant bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if mutant {
		c.mutants++
		axis, _, _ := strings.Cut(u.axis, ":")
		c.mutantsByAxis[axis]++
		if len(u.left) > 0 {
			c.mLeft++
		}
	} else {
		c.units++
		if len(u.left) == 0 {
			c.clean++
			explain := strings.HasPrefix(unitPrefix(u), "EXPLAIN")
			if explain {
				c.explain++
			}
			if u.kind&kindState != 0 {
				c.overReset++
				c.overResetByPrefix[unitPrefix(u)]++
				if explain {
					c.explainDirty++
				}
			}
		} else {
			c.leftState++
		}
	}
	if len(u.left) == 0 {
		return
	}
	if u.kind&kindState == 0 {
		if why := excuse(u, false); why != "" {
			c.excused[why]++
		} else {
			c.misses++
			c.errorf("miss: %s", &u)
		}
	}
	session := slices.ContainsFunc(u.left, func(item string) bool { return stateClass(item) != "sequence" })
	if session && u.kind&kindSession == 0 {
		if why := excuse(u, true); why != "" {
			c.excused["pooling: "+why]++
			c.excusedByPrefix[unitPrefix(u)]++
		} else {
			c.tpMisses++
			c.errorf("pooling miss: %s", &u)
		}
	}
}

// unitPrefix is the first two words of a unit, upper case, for the report.
func unitPrefix(u corpusUnit) string {
	var words []string
	l := lexer{q: u.sqls[0]}
	for len(words) < 2 {
		tk := l.next()
		if tk.kind != tWord && tk.kind != tLParen {
			break
		}
		if tk.kind == tWord {
			words = append(words, strings.ToUpper(tk.text))
		}
	}
	return strings.Join(words, " ")
}

// excuse names the exception of the package doc ("Behind PgBouncer")
// that covers u, or "". Without transaction pooling there is none.
func excuse(u corpusUnit, pooling bool) string {
	if !pooling {
		return ""
	}
	if u.hadTemp && !slices.ContainsFunc(u.left, func(item string) bool { return stateClass(item) != "temp" }) {
		// An index on a temporary table, a view over one (temporary too),
		// what ALTER TABLE adds to one: under transaction pooling there is
		// no temporary table to begin with, CREATE TEMP being refused.
		return "objects on temporary objects"
	}
	for _, q := range u.sqls {
		toks := pgcorpus.Tokens(q, true)
		if len(toks) == 0 {
			continue
		}
		switch strings.ToLower(toks[0].Text) {
		case "do", "call", "insert", "update", "delete", "merge", "copy", "execute":
			return "code the classifier cannot see"
		case "select", "with", "values", "table", "(", "explain":
			if classify(q)&kindCode != 0 {
				return "code the classifier cannot see"
			}
		}
	}
	return ""
}

func hasTemp(f fingerprint) bool {
	for k := range f {
		if stateClass(k) == "temp" {
			return true
		}
	}
	return false
}

func (c *corpusTally) report(logf func(format string, args ...any), took time.Duration) {
	logf("corpus: %d units (query strings outside a block, and blocks) in %v; %d sessions lost", c.units, took.Round(time.Second), c.lost)
	logf("mutants: %d, of which %d left state", c.mutants, c.mLeft)
	for _, axis := range slices.Sorted(maps.Keys(c.mutantsByAxis)) {
		logf("  %s: %d", axis, c.mutantsByAxis[axis])
	}
	logf("left state: %d; misses: %d; pooling misses: %d", c.leftState, c.misses, c.tpMisses)
	for _, why := range slices.Sorted(maps.Keys(c.excused)) {
		logf("excused (%s): %d", why, c.excused[why])
	}
	logf("left nothing: %d, of which classified dirty (over-reset): %d (%.1f%%)", c.clean, c.overReset, 100*float64(c.overReset)/float64(max(c.clean, 1)))
	logf("of them EXPLAIN: %d, of which classified dirty: %d", c.explain, c.explainDirty)
	logf("over-reset by first words: %s", top(c.overResetByPrefix, 25))
	logf("excused under pooling, by first words: %s", top(c.excusedByPrefix, 25))
}

// top lists the n largest counts of m.
func top(m map[string]int, n int) string {
	keys := slices.Collect(maps.Keys(m))
	sort.Slice(keys, func(i, j int) bool { return m[keys[i]] > m[keys[j]] || m[keys[i]] == m[keys[j]] && keys[i] < keys[j] })
	var b strings.Builder
	for i, k := range keys {
		if i == n {
			break
		}
		b.WriteString(k + " " + strconv.Itoa(m[k]) + "; ")
	}
	return b.String()
}

// quoteString quotes s as a SQL string constant.
func quoteString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
