package dbctx_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// hostile is the bookkeeping of TestSharedScopeHostile: what each unit
// of work reported for the rows it wrote, and what went wrong.
type hostile struct {
	t      *testing.T
	drv    string
	pool   *dbctx.Pool
	ids    atomic.Int64
	steps  atomic.Int64
	txTurn sync.Mutex // one goroutine at a time runs Atomic or BeginTx (see below)

	// Steps that hand out or use what the scope hands out (BeginTx and
	// its *sql.Tx, Conn, Pgx, PrepareContext) run alone (write lock),
	// every other step beside the others (read lock). Left: a handle used
	// while another goroutine's rows of the scope are open finds pgx's
	// connection busy ("conn busy"; a *sql.Conn's statement then gets
	// driver.ErrBadConn from pgx's stdlib, and database/sql closes the
	// scope's connection: its session is lost), and a *sql.Tx rolled
	// back on one goroutine undoes the settings applied in it for
	// another goroutine's Pgx fn.
	handles sync.RWMutex

	mu       sync.Mutex
	reported map[int64]bool   // a row's id: reported committed, or reported not
	by       map[int64]string // what wrote it
}

// outcome records what the unit that wrote row id reported.
func (h *hostile) outcome(id int64, committed bool, by string) {
	h.mu.Lock()
	h.reported[id] = committed
	h.by[id] = by
	h.mu.Unlock()
}

// documented reports whether err is an answer the scope documents for a
// shared scope under these faults.
func documented(err error) bool {
	for _, e := range []error{dbctx.ErrConnBusy, dbctx.ErrScopeEnded, dbctx.ErrSessionLost, dbctx.ErrCommitUnknown,
		dbctx.ErrInAtomic, dbctx.ErrBusy, context.Canceled, context.DeadlineExceeded, sql.ErrTxDone, sql.ErrNoRows, pgx.ErrNoRows, errRoll} {
		if errors.Is(err, e) {
			return true
		}
	}
	if errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) {
		return true // a handle of a connection a boundary discarded (Conn, *sql.Stmt)
	}
	// Rows, or a batch's results, that a boundary cut short (unexported).
	if strings.Contains(err.Error(), "statement is closed") {
		return true // a *sql.Stmt a boundary closed
	}
	// pgx's word for a handle of a connection a boundary closed ("conn
	// closed"), or busy with another goroutine's rows ("conn busy").
	return strings.Contains(err.Error(), "rows closed by the scope") || strings.Contains(err.Error(), "batch results closed") ||
		strings.Contains(err.Error(), "conn closed")
}

var errRoll = errors.New("the unit rolls back")

// check fails the test for an error the scope does not document, and for
// a statement that saw another tenant than its context declares.
func (h *hostile) check(what string, err error, tenantWant, tenantGot string) {
	h.t.Helper()
	if err != nil {
		if !documented(err) {
			h.t.Errorf("%s: %v (%T)", what, err, err)
		}
		return
	}
	if tenantGot != tenantWant {
		h.t.Errorf("%s ran with app.tenant %q, its context declares %q", what, tenantGot, tenantWant)
	}
}

const settingQ = "SELECT current_setting('app.tenant', true), coalesce(current_setting('app.onbegin', true), '')"

// step runs one random step of a goroutine sharing scope: every API of
// the scope, with a tenant of its own context, sometimes a deadline that
// ends mid-statement. Only one goroutine at a time runs a transaction
// (Atomic, BeginTx): statements of the others run in it then, as the
// package doc says, and roll back with it, so their writes go to a table
// nobody counts.
func (h *hostile) step(ctx context.Context, scope *dbctx.Scope, r *rand.Rand) {
	h.steps.Add(1)
	tn := []string{"a", "b", "c", "d"}[r.IntN(4)]
	c := tenant.With(ctx, tn)
	if r.IntN(5) == 0 {
		var cancel context.CancelFunc
		c, cancel = context.WithTimeout(c, time.Duration(r.IntN(3000))*time.Microsecond)
		defer cancel()
	}
	handles := h.drv == pgxDriver
	var got, ob string
	k := r.IntN(16)
	if k >= 11 && k <= 14 {
		h.handles.Lock()
		defer h.handles.Unlock()
	} else {
		h.handles.RLock()
		defer h.handles.RUnlock()
	}
	switch k {
	case 0:
		err := scope.QueryRowContext(c, settingQ).Scan(&got, &ob)
		h.check("QueryRowContext", err, tn, got)
	case 1:
		if !handles {
			return
		}
		err := scope.QueryRow(c, settingQ).Scan(&got, &ob)
		h.check("QueryRow", err, tn, got)
	case 2:
		if !handles {
			return
		}
		rows, err := scope.Query(c, settingQ+", g FROM generate_series(1, 20) g")
		if err == nil {
			n := 0
			for rows.Next() && (n < 5 || r.IntN(2) == 0) {
				var g int
				if err := rows.Scan(&got, &ob, &g); err == nil {
					h.check("Query's row", nil, tn, got)
				}
				n++
			}
			rows.Close()
			err = rows.Err()
		}
		h.check("Query", err, tn, tn)
	case 3:
		rows, err := scope.QueryContext(c, settingQ+", g FROM generate_series(1, 20) g")
		if err == nil {
			for rows.Next() {
				var g int
				if err := rows.Scan(&got, &ob, &g); err == nil {
					h.check("QueryContext's row", nil, tn, got)
				}
			}
			err = rows.Close()
			if err == nil {
				err = rows.Err()
			}
		}
		h.check("QueryContext", err, tn, tn)
	case 4:
		if !handles {
			return
		}
		b := &pgx.Batch{}
		b.Queue(settingQ)
		b.Queue("INSERT INTO noise VALUES (1)")
		br := scope.SendBatch(c, b)
		err := br.QueryRow().Scan(&got, &ob)
		h.check("SendBatch's row", err, tn, got)
		_, err = br.Exec()
		h.check("SendBatch's insert", err, "", "")
		h.check("SendBatch's Close", br.Close(), "", "")
	case 5:
		_, err := scope.ExecContext(c, "INSERT INTO noise VALUES (2)")
		h.check("ExecContext", err, "", "")
	case 6:
		_, err := scope.ExecContext(c, "SELECT set_config('app.y', 'left', false)") // session state the next scope must not see
		h.check("Exec", err, "", "")
	case 7:
		var locked bool
		err := scope.QueryRowContext(c, "SELECT pg_try_advisory_lock(42)").Scan(&locked) // the same
		h.check("advisory lock", err, "", "")
	case 8, 9, 10:
		h.txTurn.Lock()
		defer h.txTurn.Unlock()
		id, inner := h.ids.Add(1), h.ids.Add(1)
		innerOK := false
		err := dbctx.Atomic(c, func(c context.Context) error {
			if _, err := scope.ExecContext(c, "INSERT INTO t VALUES ($1)", id); err != nil {
				return err
			}
			var wg sync.WaitGroup
			for range 2 {
				// fn's goroutines, with fn's context and tenants of their own.
				tn2 := []string{"e", "f"}[r.IntN(2)]
				wg.Go(func() {
					var got2, ob2 string
					err := scope.QueryRowContext(tenant.With(c, tn2), settingQ).Scan(&got2, &ob2)
					h.check("a statement of fn's goroutine", err, tn2, got2)
					if err == nil && ob2 != "in" {
						h.t.Errorf("a statement of fn's goroutine saw app.onbegin %q, want OnBegin's", ob2)
					}
				})
			}
			wg.Wait()
			var xact string
			if err := scope.QueryRowContext(c, settingQ+", coalesce(pg_current_xact_id_if_assigned()::text, 'none') || ' ' || pg_backend_pid()").Scan(&got, &ob, &xact); err != nil {
				return err
			}
			h.check("a statement in Atomic", nil, tn, got)
			if ob != "in" {
				h.t.Errorf("a statement in Atomic saw app.onbegin %q, want OnBegin's (xact, pid: %s)", ob, xact)
			}
			nerr := dbctx.Atomic(c, func(c context.Context) error {
				if _, err := scope.ExecContext(c, "INSERT INTO t VALUES ($1)", inner); err != nil {
					return err
				}
				if r.IntN(2) == 0 {
					return errRoll
				}
				return nil
			})
			innerOK = nerr == nil
			h.check("nested Atomic", nerr, "", "")
			if r.IntN(4) == 0 {
				return errRoll
			}
			return nil
		})
		h.check("Atomic", err, "", "")
		if !errors.Is(err, dbctx.ErrCommitUnknown) {
			h.outcome(id, err == nil, fmt.Sprintf("Atomic (%v)", err))
			h.outcome(inner, err == nil && innerOK, fmt.Sprintf("a nested Atomic (%v, outer %v)", innerOK, err))
		}
	case 11:
		h.txTurn.Lock()
		defer h.txTurn.Unlock()
		id := h.ids.Add(1)
		tx, err := scope.BeginTx(c, nil)
		h.check("BeginTx", err, "", "")
		if err != nil {
			return
		}
		committed, inserted := false, false
		if handles {
			_, err = tx.ExecContext(c, "INSERT INTO t VALUES ($1)", id)
			inserted = err == nil
			h.check("the *sql.Tx's insert", err, "", "")
			if err == nil {
				err = tx.QueryRowContext(c, settingQ).Scan(&got, &ob)
				h.check("the *sql.Tx's statement", err, "", "")
				if err == nil && ob != "in" {
					h.t.Errorf("a statement of the *sql.Tx saw app.onbegin %q, want OnBegin's", ob)
				}
			}
		}
		if r.IntN(3) > 0 {
			err = tx.Commit()
			committed = err == nil && inserted
			h.check("Commit", err, "", "")
		} else {
			h.check("Rollback", tx.Rollback(), "", "")
		}
		if handles {
			h.outcome(id, committed, "BeginTx")
		}
	case 12:
		conn, err := scope.Conn(c)
		h.check("Conn", err, "", "")
		if err == nil && handles {
			_, err = conn.ExecContext(c, "SELECT 1")
			h.check("the *sql.Conn's statement", err, "", "")
		}
	case 13:
		if !handles {
			return
		}
		err := scope.Pgx(c, func(pc *pgx.Conn) error {
			return pc.QueryRow(c, settingQ).Scan(&got, &ob)
		})
		h.check("Pgx's fn", err, tn, got)
	case 14:
		st, err := scope.PrepareContext(c, "SELECT $1::int")
		h.check("PrepareContext", err, "", "")
		if err == nil {
			if handles {
				_, err = st.ExecContext(c, 1)
				h.check("the *sql.Stmt", err, "", "")
			}
			st.Close()
		}
	case 15:
		// A Do on the shared scope: it reuses it.
		err := dbctx.Do(c, func(c context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(c, settingQ).Scan(&got, &ob)
		})
		h.check("Do on the scope", err, tn, got)
	}
}

// TestSharedScopeHostile: goroutines share one scope and run every API of
// it at once (database/sql's and pgx's statements, rows read in part,
// batches, Atomic with goroutines of its own and a nested Atomic,
// BeginTx and its *sql.Tx, Conn, Pgx, PrepareContext, Do), each statement
// with a tenant of its own context, a quarter of them with deadlines that
// end mid-statement, and the pool's hooks running (OnAcquire in half
// the runs, with the statement's context); then the scope ends while they
// are still at it (End, the Do that made it returning, a Detach). On
// pgx's driver and on another (see otherDriver). Nothing hangs (noHang), races (-race) or panics; every error
// is one the package documents; every statement that answered saw its
// context's tenant and, in a transaction, what OnBegin set; PostgreSQL
// has exactly the rows whose transaction reported a commit; the pool
// ends with nothing in use, pinned or idle in a transaction (newPool's
// checks), and the next scope on its connections finds none of the
// session state the goroutines left. It found, each now with a test of
// its own: on another driver, statements that ran with another
// goroutine's tenant after a BeginTx whose context had ended
// (TestBeginTxFailedBeginsNothing), and a unit hung for good by a
// statement its deadline cut in BeginTx's transaction
// (TestStatementEndsInBeginTx); with OnAcquire, "driver: bad connection"
// for a deadline that ended in the hook (TestOnAcquireContextEnds).
func TestSharedScopeHostile(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request")
	for _, drv := range []string{pgxDriver, otherDriver} {
		for _, end := range []string{"End", "Do", "Detach"} {
			for _, acquire := range []bool{false, true} {
				name := drv + "/" + end
				if acquire {
					name += "/OnAcquire"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					hostileUnits(t, drv, end, acquire)
				})
			}
		}
	}
}

// hostileUnits runs TestSharedScopeHostile's units of work on driver drv,
// their scope ended by end, with an OnAcquire hook where acquire is set.
func hostileUnits(t *testing.T, drv, end string, acquire bool) {
	var released atomic.Int64
	var onAcquire func(ctx context.Context, conn *sql.Conn) error
	if acquire {
		// With the statement's context: a deadline of the
		// unit's may end it.
		onAcquire = func(ctx context.Context, conn *sql.Conn) error {
			_, err := conn.ExecContext(ctx, "SELECT set_config('app.acquired', 'yes', false)")
			return err
		}
	}
	p, env := newPoolWith(t, drv, &dbctx.Options{
		OnAcquire:   onAcquire,
		MaxWorkers:  3,
		WaitTimeout: time.Minute,
		Logger:      quiet(),
		OnRelease: func(ctx context.Context, conn *sql.Conn) error {
			released.Add(1)
			return nil
		},
		OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SET LOCAL app.onbegin = 'in'")
			return err
		},
	})
	for _, tbl := range []string{"t (n bigint)", "noise (n int)"} {
		mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+"."+tbl)
	}
	h := &hostile{t: t, drv: drv, pool: p, reported: map[int64]bool{}, by: map[int64]string{}}
	for round := range 4 {
		noHang(t, "a unit of work shared by goroutines", func() { h.unit(uint64(round), end) })
	}
	h.verify(env)
	if released.Load() == 0 {
		t.Errorf("OnRelease never ran")
	}
}

// unit runs one unit of work: goroutines on one scope, ended by end while
// they run.
func (h *hostile) unit(round uint64, end string) {
	const goroutines, steps = 5, 30
	var wg sync.WaitGroup
	start := func(ctx context.Context, scope *dbctx.Scope) {
		for g := range goroutines {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(round, uint64(g)))
				for range steps {
					h.step(ctx, scope, r)
				}
			})
		}
	}
	// The scope ends once the goroutines have run about half their steps.
	half := h.steps.Load() + goroutines*steps/2
	halfway := func() bool { return h.steps.Load() >= half }
	switch end {
	case "End":
		ctx, scope := h.pool.Scope(context.Background())
		start(ctx, scope)
		eventually(h.t, "the goroutines halfway", halfway)
		scope.End()
	case "Do":
		err := h.pool.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			start(ctx, s)
			eventually(h.t, "the goroutines halfway", halfway)
			return nil
		})
		if err != nil {
			h.t.Errorf("Do: %v", err)
		}
	case "Detach":
		ctx, scope := h.pool.Scope(context.Background())
		defer scope.End()
		start(ctx, scope)
		eventually(h.t, "the goroutines halfway", halfway)
		// Detach waits for no Atomic (it refuses while one runs).
		h.txTurn.Lock()
		dctx, ok := dbctx.Detach(ctx)
		h.txTurn.Unlock()
		if !ok {
			h.t.Errorf("Detach refused with no Atomic running")
		}
		// The detached work takes scopes of its own, with the values of
		// the context it came from.
		err := h.pool.Do(tenant.With(dctx, "z"), func(ctx context.Context, s *dbctx.Scope) error {
			var got, ob string
			err := s.QueryRowContext(ctx, settingQ).Scan(&got, &ob)
			if err == nil && got != "z" {
				h.t.Errorf("detached work saw app.tenant %q", got)
			}
			return err
		})
		if err != nil && !errors.Is(err, dbctx.ErrBusy) {
			h.t.Errorf("detached work: %v", err)
		}
	}
	wg.Wait()
}

// verify compares what PostgreSQL committed with what was reported, and
// looks at the session each of the pool's connections leaves the next
// scope.
func (h *hostile) verify(env *pgtest.Env) {
	t := h.t
	rows, err := env.Admin().Query("SELECT n FROM " + env.Schema() + ".t")
	if err != nil {
		t.Fatal(err)
	}
	committed := map[int64]bool{}
	for rows.Next() {
		var n int64
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		committed[n] = true
	}
	rows.Close()
	for id, ok := range h.reported {
		if committed[id] != ok {
			t.Errorf("row %d, of %s: reported committed %v, in PostgreSQL %v", id, h.by[id], ok, committed[id])
		}
	}
	// Every connection the pool holds, taken by scopes of their own at
	// once: none carries what the goroutines left.
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			err := h.pool.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				var tn, ob, y string
				var locks int
				err := s.QueryRowContext(ctx, `SELECT coalesce(current_setting('app.tenant', true), ''), coalesce(current_setting('app.onbegin', true), ''),
					coalesce(current_setting('app.y', true), ''), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())`).Scan(&tn, &ob, &y, &locks)
				if err != nil {
					return err
				}
				if tn != "" || ob != "" || y != "" || locks != 0 {
					return fmt.Errorf("the next scope finds app.tenant %q, app.onbegin %q, app.y %q, %d advisory locks", tn, ob, y, locks)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
}
