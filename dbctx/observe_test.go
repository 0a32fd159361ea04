package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// waits records what Options.OnWait is told.
type waits struct {
	mu   sync.Mutex
	list []dbctx.Wait
}

func (w *waits) hook(_ context.Context, x dbctx.Wait) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.list = append(w.list, x)
}

func (w *waits) take() []dbctx.Wait {
	w.mu.Lock()
	defer w.mu.Unlock()
	l := w.list
	w.list = nil
	return l
}

// OnWait is told of each caller that did not find a slot free, and of
// how its wait ended; not of those that found one.
func TestOnWait(t *testing.T) {
	t.Parallel()
	var w waits
	env := newEnv(t)
	db := env.Open(t)
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, WaitTimeout: 50 * time.Millisecond, OnWait: w.hook})
	noQueue := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1, OnWait: w.hook})
	ctx := context.Background()
	nop := func(context.Context, *dbctx.Scope) error { return nil }

	if err := p.Do(ctx, nop); err != nil {
		t.Fatal(err)
	}
	if got := w.take(); len(got) != 0 {
		t.Fatalf("a free slot was told of as a wait: %+v", got)
	}

	// Granted after a wait.
	release := holdSlot(p)
	done := make(chan error, 1)
	go func() { done <- p.Do(ctx, nop) }()
	eventually(t, "a caller queued", func() bool { return p.Stats().Waiting == 1 })
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := w.take()
	if len(got) != 1 || !got[0].Queued || got[0].Err != nil || got[0].Waited <= 0 {
		t.Fatalf("granted wait: told %+v", got)
	}

	// Timed out.
	release = holdSlot(p)
	err := p.Do(ctx, nop)
	release()
	got = w.take()
	if !errors.Is(err, dbctx.ErrBusy) || len(got) != 1 || !got[0].Queued || !errors.Is(got[0].Err, dbctx.ErrBusy) ||
		got[0].Waited < 50*time.Millisecond {
		t.Fatalf("timed-out wait: Do returned %v, told %+v", err, got)
	}
	if st := p.Stats(); st.WaitCount != 2 || st.Busy != 1 {
		t.Fatalf("stats disagree with what the hook was told: %+v", st)
	}

	// Refused at once: no queue.
	release = holdSlot(noQueue)
	err = noQueue.Do(ctx, nop)
	release()
	got = w.take()
	if !errors.Is(err, dbctx.ErrBusy) || len(got) != 1 || got[0].Queued || got[0].Waited != 0 || !errors.Is(got[0].Err, dbctx.ErrBusy) {
		t.Fatalf("refused at once: Do returned %v, told %+v", err, got)
	}
	eventually(t, "the slots to free", func() bool { return p.Stats().InUse == 0 && noQueue.Stats().InUse == 0 })
}

// OnPin is told of each pin: from the *sql.DB (new the first time), from
// the pool's keep, with the dead connections discarded on the way, and of
// a pin that failed.
func TestOnPin(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends; behind a pooler the pooler absorbs the kill")
	var mu sync.Mutex
	var pins []dbctx.Pin
	hook := func(_ context.Context, pn dbctx.Pin) {
		mu.Lock()
		pins = append(pins, pn)
		mu.Unlock()
	}
	take := func() []dbctx.Pin {
		mu.Lock()
		defer mu.Unlock()
		l := pins
		pins = nil
		return l
	}
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{OnPin: hook})
	p.SetRecent(0) // look at every connection
	p.SetKeepIdle(0)
	warm(t, p)
	if got := take(); len(got) != 1 || !got[0].New || got[0].Kept || !got[0].Checked || got[0].Err != nil || got[0].Took <= 0 {
		t.Fatalf("first pin: told %+v", got)
	}
	p.SetKeepIdle(time.Hour)
	warm(t, p) // from the *sql.DB, then kept
	warm(t, p) // from the keep
	if got := take(); len(got) != 2 || got[0].New || got[0].Kept || !got[1].Kept || !got[1].Checked {
		t.Fatalf("pins from the *sql.DB, then the keep: told %+v", got)
	}

	// A backend killed while its connection is kept: the check finds it
	// dead before use (the pin says so, as Stats does), or, where its
	// socket has not shown it yet, the statement is retried on another
	// pin.
	for round := 0; ; round++ {
		if n := env.Terminate(t); n != 1 {
			t.Fatalf("killed %d backends, want 1", n)
		}
		before := p.Stats()
		warm(t, p)
		got := take()
		dead := p.Stats().Discarded.Dead - before.Discarded.Dead
		total := 0
		for _, pn := range got {
			total += pn.Dead
		}
		if int64(total) != dead {
			t.Fatalf("pins told of %d dead connections, Stats of %d: %+v", total, dead, got)
		}
		if dead == 1 {
			break
		}
		if len(got) != 2 || round == 20 {
			t.Fatalf("round %d: neither the check nor a retry saw the killed backend: %+v", round, got)
		}
	}

	// A pin that fails.
	bad := poolOn(t, env, openDSN(t, env.Refused(t)), &dbctx.Options{OnPin: hook, Logger: quiet()})
	err := bad.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := queryInt(ctx, s, "SELECT 1")
		return err
	})
	if got := take(); err == nil || len(got) != 1 || !errors.Is(got[0].Err, dbctx.ErrUnavailable) {
		t.Fatalf("failed pin: Do returned %v, told %+v", err, got)
	}
}

type doKey struct{}

// OnDo wraps a Do that runs on a scope of its own, and is done once the
// scope has ended; a Do that reuses the scope in ctx runs no hook.
func TestOnDo(t *testing.T) {
	t.Parallel()
	var p *dbctx.Pool
	var started, ended int
	var endErr error
	p, _ = newPool(t, &dbctx.Options{OnDo: func(ctx context.Context) (context.Context, func(error)) {
		started++
		return context.WithValue(ctx, doKey{}, "hooked"), func(err error) {
			ended++
			endErr = err
			if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
				t.Errorf("done before the scope ended: %+v", st)
			}
		}
	}})
	errWork := errors.New("work failed")
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		if ctx.Value(doKey{}) != "hooked" {
			t.Error("fn did not get the hook's context")
		}
		if dbctx.From(ctx) != s {
			t.Error("the hook's context lost the scope")
		}
		if _, err := queryInt(ctx, s, "SELECT 1"); err != nil {
			return err
		}
		return errWork
	})
	if !errors.Is(err, errWork) || started != 1 || ended != 1 || !errors.Is(endErr, errWork) {
		t.Fatalf("Do returned %v; hook started %d, ended %d with %v", err, started, ended, endErr)
	}

	ctx, scope := p.Scope(context.Background())
	defer scope.End()
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := queryInt(ctx, s, "SELECT 1")
		return err
	}); err != nil || started != 1 {
		t.Fatalf("a Do on the request's scope: %v, hook started %d times, want once in all", err, started)
	}
}

// told is what a pgx tracer on the connections was told: each statement
// or batch, with the prelude PreludeOf gave at its start.
type told struct {
	mu   sync.Mutex
	list []toldStmt
}

type toldStmt struct {
	kind    string // query, batch, copy
	sql     []string
	prelude dbctx.Prelude
	ok      bool // PreludeOf's
}

func (tr *told) add(kind string, conn *pgx.Conn, sql ...string) {
	pr, ok := dbctx.PreludeOf(conn)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.list = append(tr.list, toldStmt{kind, sql, pr, ok})
}

func (tr *told) take() []toldStmt {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	l := tr.list
	tr.list = nil
	return l
}

func (tr *told) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	tr.add("query", conn, d.SQL)
	return ctx
}

func (tr *told) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (tr *told) TraceBatchStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var sql []string
	for _, q := range d.Batch.QueuedQueries {
		sql = append(sql, q.SQL)
	}
	tr.add("batch", conn, sql...)
	return ctx
}

func (tr *told) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (tr *told) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func (tr *told) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceCopyFromStartData) context.Context {
	tr.add("copy", conn, d.TableName.Sanitize())
	return ctx
}

func (tr *told) TraceCopyFromEnd(context.Context, *pgx.Conn, pgx.TraceCopyFromEndData) {}

var tracedTenant = dbctx.NewSetting("app.traced_tenant")

// tracedPool returns a pool of one connection on env whose pgx config has
// the tracer tr, and whatever set (if not nil) changes in it.
func tracedPool(t *testing.T, env *pgtest.Env, tr pgx.QueryTracer, set func(*pgx.ConnConfig)) *dbctx.Pool {
	t.Helper()
	cfg, err := pgx.ParseConfig(env.DSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Tracer = tr
	if set != nil {
		set(cfg)
	}
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(1)
	return poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1})
}

// A pgx tracer on the connections is told of every statement of a scope
// once, whatever dbscope sends before it: by pgx where pgx runs it as it
// is, by dbscope where it goes after a prelude, and PreludeOf says what
// went before. In simple_protocol mode pgx tells of the batch that
// carries both.
func TestTracerSeesEveryStatement(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "sets pgx's exec mode itself, cache_statement among them, which PgBouncer 1.18 cannot carry")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			tr := &told{}
			p := tracedPool(t, env, tr, func(cfg *pgx.ConnConfig) { cfg.DefaultQueryExecMode = mode })
			simple := mode == pgx.QueryExecModeSimpleProtocol
			ctx := context.Background()
			do := func(fn func(ctx context.Context, s *dbctx.Scope) error) []toldStmt {
				t.Helper()
				if err := p.Do(ctx, fn); err != nil {
					t.Fatal(err)
				}
				return tr.take()
			}
			// want checks that the statement was told of once, with the
			// prelude given.
			want := func(got []toldStmt, sql string, pr *dbctx.Prelude) {
				t.Helper()
				var found []toldStmt
				for _, g := range got {
					if g.sql[len(g.sql)-1] == sql {
						found = append(found, g)
					}
				}
				if len(found) != 1 {
					t.Fatalf("%q told of %d times: %+v", sql, len(found), got)
				}
				g := found[0]
				if pr == nil {
					if g.ok || g.kind == "batch" {
						t.Fatalf("%q: told of a prelude where none was sent: %+v", sql, g)
					}
					return
				}
				if simple && pr.Queries > 0 && !pr.Alone {
					pr.InBatch = true
				}
				if !g.ok || !samePrelude(g.prelude, *pr) {
					t.Fatalf("%q: told %+v (%v), want prelude %+v", sql, g.prelude, g.ok, *pr)
				}
				if pr.InBatch != (g.kind == "batch") || pr.InBatch && len(g.sql) != pr.Queries+1 {
					t.Fatalf("%q: told as a %s of %d queries, prelude %+v", sql, g.kind, len(g.sql), *pr)
				}
			}

			want(do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			}), "SELECT 1", nil)

			want(do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := queryInt(tracedTenant.With(ctx, "7"), s, "SELECT 2")
				return err
			}), "SELECT 2", &dbctx.Prelude{Settings: []string{"app.traced_tenant"}, Queries: 1})

			// SET leaves the session dirty: the next scope's first
			// statement goes after the reset.
			do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SET work_mem = '8MB'")
				return err
			})
			got3 := do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.Exec(ctx, "SELECT 3")
				return err
			})
			if mode == pgx.QueryExecModeCacheStatement {
				// Described in a round trip of its own, which must not
				// run under the settings set: the reset goes first,
				// alone.
				want(got3, "SELECT 3", nil)
			} else {
				want(got3, "SELECT 3", &dbctx.Prelude{Reset: true, Queries: 9})
			}

			// A scope that ran code (DDL here; every write) leaves the
			// reset owed with the sweep: a check, then BEGIN, the reset,
			// COMMIT; where the check is prepared on the connection
			// (cache_statement) the reset shares the statement's
			// transaction, with no BEGIN and no COMMIT; in the simple
			// protocol there is no check, and the sweep is a statement.
			do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "CREATE TABLE traced_scratch (n int)")
				return err
			})
			afterCode := &dbctx.Prelude{Reset: true, Queries: 10}
			if mode == pgx.QueryExecModeCacheStatement {
				afterCode.Queries = 8
			}
			want(do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.Exec(ctx, "SELECT 30")
				return err
			}), "SELECT 30", afterCode)

			got := do(func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := s.ExecContext(ctx, "SELECT 4")
					return err
				})
			})
			want(got, "SELECT 4", &dbctx.Prelude{Begin: true, Queries: 1})
			want(got, "COMMIT", nil)

			// COPY cannot share its round trip: the settings go alone,
			// told of as a statement of their own.
			got = do(func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := s.ExecContext(ctx, "CREATE TEMP TABLE copied (a int)"); err != nil {
					return err
				}
				_, err := s.CopyFrom(tracedTenant.With(ctx, "8"), pgx.Identifier{"copied"}, []string{"a"}, pgx.CopyFromRows([][]any{{1}}))
				return err
			})
			want(got, "SELECT pg_catalog.set_config($1, $2, $3)", &dbctx.Prelude{Settings: []string{"app.traced_tenant"}, Queries: 1, Alone: true})
			if i := slices.IndexFunc(got, func(g toldStmt) bool { return g.kind == "copy" }); i < 0 || got[i].ok {
				t.Fatalf("COPY told of %+v", got)
			}

			// A batch after a prelude: its first queries are the prelude's.
			got = do(func(ctx context.Context, s *dbctx.Scope) error {
				b := &pgx.Batch{}
				b.Queue("SELECT 5")
				b.Queue("SELECT 6")
				return s.SendBatch(ctx, b).Close()
			})
			if mode == pgx.QueryExecModeCacheStatement {
				// After code (the temp table's DDL), pgx's batch would
				// bind the reset's statements by names of its cache,
				// which such code can replace: the reset goes first,
				// alone.
				if len(got) != 2 || !got[0].ok || !got[0].prelude.Reset || !got[0].prelude.Alone ||
					got[1].kind != "batch" || got[1].prelude.Queries != 0 || len(got[1].sql) != 2 {
					t.Fatalf("batch after the reset of the temp table: told %+v", got)
				}
			} else if len(got) != 1 || got[0].kind != "batch" || !got[0].ok || !got[0].prelude.Reset || got[0].prelude.InBatch ||
				len(got[0].sql) != got[0].prelude.Queries+2 || !strings.HasPrefix(got[0].sql[got[0].prelude.Queries], "SELECT 5") {
				t.Fatalf("batch after the reset of the temp table: told %+v", got)
			}
		})
	}
}

func samePrelude(a, b dbctx.Prelude) bool {
	return a.Reset == b.Reset && a.Begin == b.Begin && slices.Equal(a.Settings, b.Settings) && a.Local == b.Local &&
		a.Queries == b.Queries && a.Alone == b.Alone && a.InBatch == b.InBatch
}

// argsTracer keeps the arguments it is told of at a statement's start and
// reads them at its end, as pgx's tracelog does (it logs them then).
type argsTracer struct {
	mu   sync.Mutex
	ends int
	bad  []string
}

type argsSeenKey struct{}

type argsSeen struct {
	kept  []any  // as told at the start
	start string // what they were then
}

func (tr *argsTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return context.WithValue(ctx, argsSeenKey{}, &argsSeen{kept: d.Args, start: fmt.Sprint(d.Args...)})
}

func (tr *argsTracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	a, ok := ctx.Value(argsSeenKey{}).(*argsSeen)
	if !ok {
		return
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.ends++
	if end := fmt.Sprint(a.kept...); end != a.start {
		tr.bad = append(tr.bad, a.start+" at the start, "+end+" at the end")
	}
}

// A pgx tracer that keeps the arguments of a database/sql query through a
// scope until the query ends reads them unchanged then: a row read at
// once, rows handed out and closed later, a query that fails.
func TestTracerArgsUntilEnd(t *testing.T) {
	t.Parallel()
	tr := &argsTracer{}
	p := tracedPool(t, newEnv(t), tr, nil)
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var n int
		var text string
		if err := s.QueryRowContext(ctx, "SELECT $1::int + 1, $2::text", 41, "forty-one").Scan(&n, &text); err != nil {
			return err
		}
		rows, err := s.QueryContext(ctx, "SELECT g FROM generate_series(1, $1::int) g", 3)
		if err != nil {
			return err
		}
		for rows.Next() {
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := s.QueryRowContext(ctx, "SELECT 1 / $1::int", 0).Scan(&n); err == nil {
			return errors.New("division by zero succeeded")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.ends < 3 {
		t.Fatalf("the tracer was told of %d statements' ends, want 3", tr.ends)
	}
	if len(tr.bad) > 0 {
		t.Errorf("arguments changed under the tracer: %v", tr.bad)
	}
}
