package dbctx

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
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
	o := startCorpusCluster(t)
	start := time.Now()
	var tally corpusTally
	for _, f := range files {
		o.runFile(t, f, &tally)
	}
	tally.report(t, time.Since(start))
}

// corpusCluster is the throwaway cluster the oracle runs in.
type corpusCluster struct {
	url string // of database regression
}

// fingerprintSQL creates what reads a session's state, as the bootstrap
// superuser whatever role the session has taken, with pg_catalog first.
const fingerprintSQL = `
CREATE SCHEMA dbscope_oracle;
GRANT USAGE ON SCHEMA dbscope_oracle TO PUBLIC;
CREATE FUNCTION dbscope_oracle.fingerprint(prev jsonb) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
	r text;
	s oid;
	v text;
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
// sequence items as a JSON object.
const probeQuery = "SELECT 'user current' || E'\\t' || current_user || E'\\n' || dbscope_oracle.fingerprint(%s)"

func startCorpusCluster(t *testing.T) *corpusCluster {
	t.Helper()
	ctx := context.Background()
	url, stop, err := pgserver.StartCluster(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	pc, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	// As pg_regress does: the database, its settings, the role names the
	// scripts expect.
	for _, q := range []string{
		"CREATE DATABASE regression TEMPLATE template0",
		"ALTER DATABASE regression SET lc_messages TO 'C'",
		"ALTER DATABASE regression SET timezone TO 'PST8PDT'",
		"ALTER DATABASE regression SET datestyle TO 'Postgres, MDY'",
		"ALTER DATABASE regression SET intervalstyle TO 'postgres_verbose'",
	} {
		if _, err := pc.Exec(ctx, q).ReadAll(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	dsn, err := pgserver.WithParams(url, "dbname", "regression")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	if _, err := rc.Exec(ctx, fingerprintSQL).ReadAll(); err != nil {
		t.Fatal(err)
	}
	return &corpusCluster{url: dsn}
}

// session is one session of the oracle, fingerprinted.
type session struct {
	pc    *pgconn.PgConn
	fresh fingerprint // of a session just connected
	last  fingerprint // the last one taken
}

// corpusStepTimeout bounds one query string; the server's
// statement_timeout is set lower, so this only catches what it cannot.
const corpusStepTimeout = 60 * time.Second

func (o *corpusCluster) connect(ctx context.Context) (*session, error) {
	cfg, err := pgconn.ParseConfig(o.url)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["statement_timeout"] = "20s"
	cfg.RuntimeParams["application_name"] = "dbscope_corpus"
	// A canceled step asks the server to cancel, and keeps the session.
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, CancelRequestDelay: 0, DeadlineDelay: 10 * time.Second}
	}
	pc, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s := &session{pc: pc}
	if s.fresh, err = s.fingerprint(ctx); err != nil {
		pc.Close(ctx)
		return nil, err
	}
	return s, nil
}

// exec sends sql as one simple Query and reads every answer, sending
// copyData() where the server asks for COPY data. It returns the first
// error the server reported, or what broke the connection (then
// s.pc.IsClosed()).
func (s *session) exec(ctx context.Context, sql string, copyData func() string) error {
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

func (s *session) fingerprint(ctx context.Context) (fingerprint, error) {
	ctx, cancel := context.WithTimeout(ctx, corpusStepTimeout)
	defer cancel()
	prev := map[string]string{}
	for k, v := range s.last {
		if strings.HasPrefix(k, "disk ") || strings.HasPrefix(k, "sequence ") {
			prev[k] = v
		}
	}
	js, _ := json.Marshal(prev)
	res, err := s.pc.Exec(ctx, fmt.Sprintf(probeQuery, quoteString(string(js)))).ReadAll()
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
func (s *session) left(before, after fingerprint) []string {
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
}

func (u *corpusUnit) String() string {
	q := strings.Join(u.sqls, "\n")
	if len(q) > 300 {
		q = q[:300] + "…"
	}
	return fmt.Sprintf("%s:%d (%s): %q left %s", u.file, u.line, kindString(u.kind), q, strings.Join(u.left, ", "))
}

// runFile runs one script in a session of its own (a new one at each \c,
// and after a step that broke the session).
func (o *corpusCluster) runFile(t *testing.T, f pgcorpus.File, tally *corpusTally) {
	ctx := context.Background()
	s, err := o.connect(ctx)
	if err != nil {
		t.Fatalf("%s: %v", f.Name, err)
	}
	defer func() { s.pc.Close(ctx) }()
	before := s.fresh
	script := pgcorpus.NewScript(f.SQL)
	u := corpusUnit{file: f.Name}
	for {
		std := s.pc.ParameterStatus("standard_conforming_strings") != "off"
		step, ok := script.Next(std)
		if !ok {
			break
		}
		if step.Reconnect || s.pc.IsClosed() {
			s.pc.Close(ctx)
			if s, err = o.connect(ctx); err != nil {
				t.Fatalf("%s:%d: %v", f.Name, step.Line, err)
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
		u.kind |= classify(step.SQL)
		t0 := time.Now()
		s.exec(ctx, step.SQL, script.CopyData)
		tally.execTime += time.Since(t0)
		if s.pc.IsClosed() {
			tally.lost++
			u = corpusUnit{file: f.Name}
			continue
		}
		if s.pc.TxStatus() != 'I' {
			continue
		}
		t0 = time.Now()
		after, err := s.fingerprint(ctx)
		tally.fpTime += time.Since(t0)
		if err != nil {
			t.Errorf("%s:%d: fingerprint: %v", f.Name, step.Line, err)
			s.pc.Close(ctx)
			continue
		}
		u.left = s.left(before, after)
		tally.judge(t, u)
		before, u = after, corpusUnit{file: f.Name}
	}
}

// corpusTally counts what the oracle saw.
type corpusTally struct {
	mu                sync.Mutex
	units, leftState  int
	clean, overReset  int
	misses, tpMisses  int
	excused           map[string]int
	lost              int
	execTime, fpTime  time.Duration
	overResetByPrefix map[string]int
}

func (c *corpusTally) judge(t *testing.T, u corpusUnit) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.units++
	if c.excused == nil {
		c.excused, c.overResetByPrefix = map[string]int{}, map[string]int{}
	}
	if len(u.left) == 0 {
		c.clean++
		if u.kind&kindState != 0 {
			c.overReset++
			c.overResetByPrefix[unitPrefix(u)]++
		}
		return
	}
	c.leftState++
	if u.kind&kindState == 0 {
		if why := excuse(u, false); why != "" {
			c.excused[why]++
		} else {
			c.misses++
			t.Errorf("miss: %s", &u)
		}
	}
	session := slices.ContainsFunc(u.left, func(item string) bool { return stateClass(item) != "sequence" })
	if session && u.kind&kindSession == 0 {
		if why := excuse(u, true); why != "" {
			c.excused["pooling: "+why]++
		} else {
			c.tpMisses++
			t.Errorf("pooling miss: %s", &u)
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

// excuse names the exception of the package doc that covers u, or "".
func excuse(u corpusUnit, pooling bool) string {
	switch {
	case pooling && u.kind&kindCode != 0:
		return "code the classifier cannot see"
	}
	return ""
}

func (c *corpusTally) report(t *testing.T, took time.Duration) {
	t.Logf("corpus: %d units (query strings outside a block, and blocks) in %v; %d sessions lost", c.units, took.Round(time.Second), c.lost)
	t.Logf("time running the corpus: %v, fingerprinting: %v", c.execTime.Round(time.Second), c.fpTime.Round(time.Second))
	t.Logf("left state: %d; misses: %d; pooling misses: %d", c.leftState, c.misses, c.tpMisses)
	for why, n := range c.excused {
		t.Logf("excused (%s): %d", why, n)
	}
	t.Logf("left nothing: %d, of which classified dirty (over-reset): %d (%.1f%%)", c.clean, c.overReset, 100*float64(c.overReset)/float64(max(c.clean, 1)))
	type kv struct {
		k string
		n int
	}
	var top []kv
	for k, n := range c.overResetByPrefix {
		top = append(top, kv{k, n})
	}
	sort.Slice(top, func(i, j int) bool { return top[i].n > top[j].n })
	var b strings.Builder
	for i, e := range top {
		if i == 25 {
			break
		}
		b.WriteString(e.k + " " + strconv.Itoa(e.n) + "; ")
	}
	t.Logf("over-reset by first words: %s", b.String())
}

// quoteString quotes s as a SQL string constant.
func quoteString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
