package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// A unit of work of the sweep: run writes its rows (want of them) under
// run id r, or reads; before, where given, is a unit run first on the
// same connection that leaves session state, whose reset the unit owes.
type sweepUnit struct {
	name   string
	want   int  // rows the unit writes where it commits
	atomic bool // OnCommit is registered, and must run iff committed
	pgx    bool // it uses the scope's pgx methods: not on another driver
	// rollback: it rolls back, whatever happens (want 0), and its
	// OnCommit must never run.
	rollback bool
	before   func(ctx context.Context, s *dbctx.Scope) error
	run      func(ctx context.Context, s *dbctx.Scope, r int, onCommit func()) error
}

var sweepUnits = []sweepUnit{
	{name: "write", want: 1, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		_, err := s.ExecContext(ctx, "INSERT INTO u VALUES ($1)", r)
		return err
	}},
	{name: "write-returning", want: 1, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		rows, err := s.QueryContext(ctx, "INSERT INTO u VALUES ($1) RETURNING k", r)
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		rows.Close()
		return rows.Err()
	}},
	{name: "pgx-returning", want: 1, pgx: true, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		rows, err := s.Query(ctx, "INSERT INTO u VALUES ($1) RETURNING k", r)
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		rows.Close()
		return rows.Err()
	}},
	{name: "atomic", want: 2, atomic: true, run: func(ctx context.Context, s *dbctx.Scope, r int, onCommit func()) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO w VALUES ($1, 1)", r); err != nil {
				return err
			}
			if _, err := s.ExecContext(ctx, "INSERT INTO w VALUES ($1, 2)", r); err != nil {
				return err
			}
			dbctx.OnCommit(ctx, onCommit)
			return nil
		})
	}},
	{name: "atomic-rollback", rollback: true, run: func(ctx context.Context, s *dbctx.Scope, r int, onCommit func()) error {
		// Rolled back, whatever happens: no row, OnCommit never run.
		err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO w VALUES ($1, 1)", r); err != nil {
				return err
			}
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, "INSERT INTO w VALUES ($1, 2)", r)
				dbctx.OnCommit(ctx, onCommit)
				return err
			})
			if err != nil {
				return err
			}
			return errRollBack
		})
		if errors.Is(err, errRollBack) {
			return nil
		}
		return err
	}},
	{name: "read-then-write", want: 1, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		var n int
		if err := s.QueryRowContext(ctx, "SELECT count(*) FROM u").Scan(&n); err != nil {
			return err
		}
		_, err := s.ExecContext(ctx, "INSERT INTO u VALUES ($1)", r)
		return err
	}},
	{name: "atomic-pgx", want: 3, atomic: true, pgx: true, run: func(ctx context.Context, s *dbctx.Scope, r int, onCommit func()) error {
		// A tenant declared, a batch and a COPY inside, a savepoint
		// that commits.
		ctx = tenant.With(ctx, "t2")
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			b := &pgx.Batch{}
			b.Queue("INSERT INTO w VALUES ($1, 1)", r)
			b.Queue("SELECT 1 FROM items LIMIT 1")
			if err := s.SendBatch(ctx, b).Close(); err != nil {
				return err
			}
			if err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.CopyFrom(ctx, pgx.Identifier{"w"}, []string{"run", "item"}, pgx.CopyFromRows([][]any{{r, 2}}))
				return err
			}); err != nil {
				return err
			}
			var n int
			if err := s.QueryRow(ctx, "INSERT INTO w SELECT $1, count(*) FROM items RETURNING item", r).Scan(&n); err != nil {
				return err
			}
			if n != 10 {
				return errSweepWrong{fmt.Sprintf("tenant t2 saw %d items, want 10", n)}
			}
			dbctx.OnCommit(ctx, onCommit)
			return nil
		})
	}},
	{name: "read", run: func(ctx context.Context, s *dbctx.Scope, _ int, _ func()) error {
		ctx = tenant.With(ctx, "t3")
		var v seen
		if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
			return err
		}
		if v != (seen{"t3", 10}) {
			return errSweepWrong{fmt.Sprintf("the read saw %+v, want tenant t3 and its 10 items", v)}
		}
		return nil
	}},
	{name: "batch", want: 2, pgx: true, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		b := &pgx.Batch{}
		b.Queue("INSERT INTO w VALUES ($1, 1)", r)
		b.Queue("INSERT INTO w VALUES ($1, 2)", r)
		br := s.SendBatch(ctx, b)
		_, err1 := br.Exec()
		_, err2 := br.Exec()
		return errors.Join(err1, err2, br.Close())
	}},
	{name: "copy", want: 3, pgx: true, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		n, err := s.CopyFrom(ctx, pgx.Identifier{"w"}, []string{"run", "item"},
			pgx.CopyFromRows([][]any{{r, 1}, {r, 2}, {r, 3}}))
		if err == nil && n != 3 {
			return errSweepWrong{fmt.Sprintf("CopyFrom said %d rows, want 3", n)}
		}
		return err
	}},
	{name: "copy-tenant", want: 2, pgx: true, run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
		// Into copied, whose tenant column takes app.tenant: the
		// settings go first (under TransactionPooling, in a transaction
		// of the COPY's own).
		ctx = tenant.With(ctx, "t4")
		_, err := s.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "name"},
			pgx.CopyFromRows([][]any{{10 * r, "a"}, {10*r + 1, "b"}}))
		return err
	}},
	{name: "owed-reset", want: 1,
		before: leaveState,
		run: func(ctx context.Context, s *dbctx.Scope, r int, _ func()) error {
			_, err := s.ExecContext(ctx, "INSERT INTO u VALUES ($1)", r)
			return err
		}},
}

// leaveState is a unit that leaves session state, whose reset the next
// unit on the connection owes.
func leaveState(ctx context.Context, s *dbctx.Scope) error {
	_, err := s.ExecContext(ctx, "SET work_mem = '7MB'; CREATE TEMP TABLE leftover (x int)")
	return err
}

func init() {
	// The units whose first round trip carries the reset owed (the
	// write's, owed-reset, above), also after such a unit: Atomic's
	// BEGIN, a batch, a COPY (which cannot share its round trip).
	for _, name := range []string{"atomic", "batch", "copy"} {
		for _, u := range sweepUnits {
			if u.name == name {
				u.name += "-owed"
				u.before = leaveState
				sweepUnits = append(sweepUnits, u)
				break
			}
		}
	}
}

// errSweepWrong is a unit's own finding that what it read was wrong.
type errSweepWrong struct{ what string }

func (e errSweepWrong) Error() string { return e.what }

// The faults of the sweep, done at a point of the unit's exchange.
const (
	faultCut       = "cut"       // the connection closed, both ways
	faultTerminate = "terminate" // pg_terminate_backend, then the bytes go on
	faultCancel    = "cancel"    // the unit's context canceled, then the bytes go on
)

// A systematic sweep of faults over every point of a unit of work's
// exchange with PostgreSQL. Each unit runs once through a proxy that
// records its exchange (the bytes each way, where each message began),
// then once per point of it (every message's start, a point inside its
// header and one in its body, the end) with a fault there: the
// connection cut, the backend terminated, the unit's context canceled.
// PostgreSQL is the oracle: the rows match what Do reported (nil:
// committed, once; ErrCommitUnknown: all or none; a canceled statement
// outside a transaction, whose outcome the context's error does not
// say: all or none; any other error: none), never a duplicate nor part
// of a unit, OnCommit ran iff the unit committed, nothing hung, and the
// next unit on the pool of one connection runs and sees no session state,
// nothing idle in a transaction. DBSCOPE_SWEEP_UNIT narrows it to one
// unit, for a reproducer; -short tries one point in four (of at most
// maxSweepPoints).
func TestFaultSweep(t *testing.T) {
	pgtest.SkipPooled(t, "cuts, terminates")
	only := os.Getenv("DBSCOPE_SWEEP_UNIT")
	for _, mode := range sweepModes {
		for _, u := range sweepUnits {
			if only != "" && only != u.name || u.pgx && mode == otherSweepMode || u.before != nil && mode == txPoolingSweepMode {
				continue
			}
			t.Run(mode+"/"+u.name, func(t *testing.T) {
				t.Parallel()
				sw := newSweep(t, mode, u)
				tap := sw.run(t, "", nil)
				pts := tap.Points()
				t.Logf("%d points; the exchange:\n%s", len(pts), tap)
				// At most maxSweepPoints (a quarter of them under -short),
				// evenly spaced, the exchange's first and last kept.
				stride := (len(pts) + maxSweepPoints - 1) / maxSweepPoints
				if testing.Short() {
					stride = max(stride, 4)
				}
				var some []pgtest.Point
				for i, pt := range pts {
					if i%stride == 0 || i == len(pts)-1 {
						some = append(some, pt)
					}
				}
				pts = some
				for _, fault := range []string{faultCut, faultTerminate, faultCancel} {
					for _, pt := range pts {
						sw.run(t, fault, &pt)
					}
				}
			})
		}
	}
}

type sweep struct {
	env      *pgtest.Env
	mode     string
	u        sweepUnit
	r        int    // the last run's id
	workMem  string // a fresh session's
	outcomes map[string]int
}

func newSweep(t *testing.T, mode string, u sweepUnit) *sweep {
	env := newEnv(t)
	rls(t, env)
	sch, role := `"`+env.Schema()+`"`, `"`+env.Role()+`"`
	for _, q := range []string{
		"CREATE TABLE " + sch + ".u (k int PRIMARY KEY)",
		"CREATE TABLE " + sch + ".w (run int NOT NULL, item int NOT NULL)",
		"ALTER TABLE " + sch + ".u OWNER TO " + role,
		"ALTER TABLE " + sch + ".w OWNER TO " + role,
	} {
		mustExec(t, env.Admin(), q)
	}
	sw := &sweep{env: env, mode: mode, u: u, outcomes: map[string]int{}}
	if err := env.Admin().QueryRow("SELECT reset_val FROM pg_settings WHERE name = 'work_mem'").Scan(&sw.workMem); err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(sw.workMem)
	sw.workMem = strconv.Itoa(n/1024) + "MB"
	t.Cleanup(func() { t.Logf("outcomes: %v", sw.outcomes) })
	return sw
}

// rows returns how many rows run r wrote.
func (sw *sweep) rows(t *testing.T, r int) int {
	t.Helper()
	var n int
	// A row of copied under another tenant than the unit's counts 100:
	// never 0 nor the unit's rows.
	sc := sw.env.Schema()
	q := "SELECT (SELECT count(*) FROM " + sc + ".u WHERE k = $1) + (SELECT count(*) FROM " + sc + ".w WHERE run = $1)" +
		" + (SELECT coalesce(sum(CASE tenant WHEN 't4' THEN 1 ELSE 100 END), 0) FROM " + sc + ".copied WHERE id / 10 = $1)"
	if err := sw.env.Admin().QueryRow(q, r).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// run runs the unit once on a pool of one connection through a proxy of
// its own, with fault at pt (none where pt is nil), checks what
// PostgreSQL holds against what it was told, and returns the tap that
// followed the unit's exchange.
func (sw *sweep) run(t *testing.T, fault string, pt *pgtest.Point) *pgtest.Tap {
	t.Helper()
	sw.r++
	r := sw.r
	where := fmt.Sprintf("run %d, %s at %+v", r, fault, pt)
	px := pgtest.NewProxy(t, sw.env)
	defer px.Close()
	mode := sw.mode
	if mode == txPoolingSweepMode {
		mode = "exec"
	}
	dsn, err := pgserver.WithParams(px.DSN(), "default_query_exec_mode", mode)
	if err != nil {
		t.Fatal(err)
	}
	var db *sql.DB
	if sw.mode == otherSweepMode {
		db = pgtest.OpenWrappedDSN(t, px.DSN())
	} else {
		db = openDSN(t, dsn)
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	p := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, Logger: quiet(), TransactionPooling: sw.mode == txPoolingSweepMode})
	defer p.Close()
	// The connection stays in the pool's keep, so that nothing but the
	// unit's own statements goes over it (a reset as it goes back to
	// the *sql.DB).
	p.SetKeepIdle(time.Hour)
	p.SetKeepFor(time.Hour)
	bg := context.Background()
	if err := p.Do(bg, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SELECT 1")
		return err
	}); err != nil {
		t.Fatalf("%s: warm-up: %v", where, err)
	}
	if sw.u.before != nil {
		if err := p.Do(bg, sw.u.before); err != nil {
			t.Fatalf("%s: the unit before: %v", where, err)
		}
	}
	tap := px.Tap(t)
	ctx, cancel := context.WithCancel(bg)
	defer cancel()
	acted := make(chan struct{})
	if pt != nil {
		tap.At(*pt, func() {
			defer close(acted)
			switch fault {
			case faultCut:
				tap.Cut()
			case faultTerminate:
				tctx, tcancel := context.WithTimeout(bg, 30*time.Second)
				defer tcancel()
				if _, err := sw.env.TerminateContext(tctx); err != nil {
					t.Errorf("%s: terminate: %v", where, err)
				}
			case faultCancel:
				cancel()
			}
		})
	}
	var ran atomic.Int32
	var derr error
	dbtest.NoHang(t, where, func() {
		derr = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return sw.u.run(ctx, s, r, func() { ran.Add(1) })
		})
	})
	tap.Stop()
	if tap.Fired() {
		dbtest.NoHang(t, where+": the fault", func() { <-acted })
	}
	got := sw.rows(t, r)
	canceled := errors.Is(derr, context.Canceled)
	var wrong errSweepWrong
	switch {
	case errors.As(derr, &wrong):
		t.Errorf("%s: %v", where, derr)
	case got != 0 && got != sw.u.want:
		t.Errorf("%s: Do: %v; PostgreSQL holds %d rows of the unit, want 0 or %d (a duplicate, or part of it)", where, derr, got, sw.u.want)
	case derr == nil && got != sw.u.want:
		t.Errorf("%s: Do: nil; PostgreSQL holds %d rows of the unit, want %d", where, got, sw.u.want)
	case errors.Is(derr, dbctx.ErrCommitUnknown):
	case canceled && !sw.u.atomic:
		// The context's error: the statement, outside a transaction,
		// may have committed before the cancel reached it.
	case derr != nil && got != 0:
		t.Errorf("%s: Do: %v; PostgreSQL holds %d rows of the unit, want none", where, derr, got)
	}
	if n := ran.Load(); sw.u.rollback && n != 0 {
		t.Errorf("%s: Do: %v, %d rows; OnCommit of a rolled back Atomic ran %d times", where, derr, got, n)
	}
	if sw.u.atomic {
		committed := got == sw.u.want
		if n := ran.Load(); n > 1 || (n == 1) != (committed && derr == nil) {
			t.Errorf("%s: Do: %v, %d rows; OnCommit ran %d times", where, derr, got, n)
		}
	}
	sw.outcomes[outcomeName(derr, got)]++
	if pt != nil && !tap.Fired() {
		sw.outcomes["point not reached"]++
	}
	// The next unit on the pool runs, and sees a fresh session. (Its
	// connection is looked at first: one the unit gave back a moment
	// ago is not, and a cut that came after the unit, at the end of its
	// exchange, would fail the next one's first statement; see
	// Pool.check.)
	p.SetRecent(0)
	var wm, ten string
	var temps int
	next := func() error {
		return p.Do(bg, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, `SELECT current_setting('work_mem'), coalesce(current_setting('app.tenant', true), ''),
			(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())`).Scan(&wm, &ten, &temps)
		})
	}
	err = next()
	if err != nil && sw.mode == otherSweepMode && derr == nil && errors.Is(err, dbctx.ErrCommitUnknown) {
		// Another driver's connection, cut after the unit (the point at
		// the end of its exchange) while idle, is not looked at before
		// it is used (see Pool.check): its next statement finds it so.
		err = next()
	}
	if err != nil {
		t.Errorf("%s (Do: %v): the next unit: %v", where, derr, err)
	} else if wm != sw.workMem || ten != "" || temps != 0 {
		t.Errorf("%s (Do: %v): the next unit sees work_mem %s, app.tenant %q, %d temporary tables; want %s, none, none", where, derr, wm, ten, temps, sw.workMem)
	}
	dbtest.Clean(t, p, sw.env)
	if t.Failed() {
		t.FailNow()
	}
	return tap
}

func outcomeName(err error, rows int) string {
	switch {
	case err == nil:
		return fmt.Sprintf("nil/%d", rows)
	case errors.Is(err, dbctx.ErrCommitUnknown):
		return fmt.Sprintf("unknown/%d", rows)
	case errors.Is(err, dbctx.ErrSessionLost):
		return fmt.Sprintf("lost/%d", rows)
	case errors.Is(err, context.Canceled):
		return fmt.Sprintf("canceled/%d", rows)
	}
	return fmt.Sprintf("other/%d", rows)
}

// maxSweepPoints bounds the points TestFaultSweep tries per unit and
// mode: a reset prepared for the first time on the connection makes
// an exchange of 350.
const maxSweepPoints = 100

// sweepModes are the exec modes TestFaultSweep runs in; DBSCOPE_SWEEP_MODES
// (comma-separated) names others.
var sweepModes = func() []string {
	if m := os.Getenv("DBSCOPE_SWEEP_MODES"); m != "" {
		return strings.Split(m, ",")
	}
	return []string{"cache_statement", "exec", otherSweepMode, txPoolingSweepMode}
}()

// otherSweepMode is TestFaultSweep on another driver than pgx's (one that
// wraps it, in its default exec mode), the units that use database/sql's
// methods alone.
const otherSweepMode = "another-driver"

// txPoolingSweepMode is TestFaultSweep in exec mode with
// Options.TransactionPooling (settings per transaction, COPY with them in
// a transaction of its own), straight to PostgreSQL; not the unit that
// sets session state, refused there.
const txPoolingSweepMode = "exec-txpooling"
