package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// parkedIn reports whether a goroutine with a frame of marker (a function
// of the test's own, naming the goroutine) is parked (not running) with
// a frame of fn: waiting inside it.
func parkedIn(marker, fn string) bool {
	buf := make([]byte, 4<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		head, _, _ := strings.Cut(g, "\n")
		if strings.Contains(g, marker) && strings.Contains(g, fn) &&
			!strings.Contains(head, "running") && !strings.Contains(head, "runnable") {
			return true
		}
	}
	return false
}

// racerStatement is the statement of a goroutine that shares a scope with
// one whose transaction is beginning: the name marks it in stacks.
func racerStatement(ctx context.Context, s *dbctx.Scope) (string, error) {
	var v string
	err := s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.onbegin', true), '')").Scan(&v)
	return v, err
}

// Options.OnBegin runs before the transaction's first statement, on
// whichever goroutine of the unit of work begins it: a statement of
// another goroutine sharing the scope, sent while OnBegin runs, waits for
// it, and runs in the transaction with what OnBegin set (PostgreSQL's
// current_setting says so). It ran before OnBegin's SET LOCAL, in the
// transaction already begun. OnBegin runs once per transaction. Through
// Atomic and BeginTx, on both drivers. The hook holds its statement until
// the other goroutine's is either done or waiting inside the scope.
func TestOnBeginBeforeOtherGoroutines(t *testing.T) {
	t.Parallel()
	for _, drv := range []string{pgxDriver, otherDriver} {
		for _, how := range []string{"Atomic", "BeginTx"} {
			t.Run(drv+"/"+how, func(t *testing.T) {
				// Not parallel: the racer's goroutine is found by name.
				var calls atomic.Int32
				var racerDone atomic.Bool
				entered := make(chan struct{}, 1)
				p, _ := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 2, OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
					calls.Add(1)
					entered <- struct{}{}
					eventually(t, "the other goroutine's statement done, or waiting", func() bool {
						return racerDone.Load() || parkedIn("dbctx_test.racerStatement", "dbctx.(*Scope).exec")
					})
					_, err := s.ExecContext(ctx, "SELECT set_config('app.onbegin', 'on', true)")
					return err
				}})
				noHang(t, "the unit of work", func() {
					ctx, scope := p.Scope(context.Background())
					defer scope.End()
					var got string
					var rerr error
					var wg sync.WaitGroup
					wg.Go(func() {
						<-entered
						got, rerr = racerStatement(ctx, scope)
						racerDone.Store(true)
					})
					var err error
					switch how {
					case "Atomic":
						err = dbctx.Atomic(ctx, func(ctx context.Context) error {
							_, err := scope.ExecContext(ctx, "SELECT 1")
							wg.Wait()
							return err
						})
					case "BeginTx":
						var tx *sql.Tx
						if tx, err = scope.BeginTx(ctx, nil); err == nil {
							wg.Wait()
							err = tx.Commit()
						}
					}
					wg.Wait()
					if err != nil || rerr != nil {
						t.Fatalf("%s: %v; the other goroutine's statement: %v", how, err, rerr)
					}
					if got != "on" {
						t.Errorf("a statement of another goroutine during OnBegin saw app.onbegin %q, want OnBegin's \"on\"", got)
					}
					if n := calls.Load(); n != 1 {
						t.Errorf("OnBegin ran %d times for one transaction", n)
					}
				})
			})
		}
	}
}

// txHolder, txCommitter and scopeEnder name the goroutines of
// TestTxEndedWhileScopeEnds in stacks.
func txHolder(ctx context.Context, tx *sql.Tx, key int) error {
	_, err := tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", key)
	return err
}

func txCommitter(tx *sql.Tx) error { return tx.Commit() }

func scopeEnder(s *dbctx.Scope) { s.End() }

// A *sql.Tx of BeginTx committed on one goroutine while the scope ends on
// another (which the doc says not to do: boundaries come after the
// unit's goroutines): Commit reports what PostgreSQL did, and the next
// scope on the connection is not reached by it. The scope's end found
// the transaction still open, database/sql's Commit under way but not yet
// sent (it waits for a statement of the *sql.Tx on a third goroutine),
// rolled it back itself and gave the connection back, and the late
// COMMIT, in no transaction, reported success: the row was not there.
// The goroutines are lined up by their stacks: the Commit waiting for
// the statement, the end waiting for the connection, then the statement
// let go.
func TestTxEndedWhileScopeEnds(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "finds the statement's backend waiting in pg_stat_activity, which a pooler hides")
	for _, drv := range []string{pgxDriver, otherDriver} {
		t.Run(drv, func(t *testing.T) {
			// Not parallel: the goroutines are found by name.
			env := newEnv(t)
			db := openWith(t, env, drv)
			db.SetMaxOpenConns(1) // the next scope gets the same connection
			p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
			const key = 731845502
			lock, err := env.Admin().Conn(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Close()
			for i := 1; i <= 6; i++ {
				noHang(t, "a Commit as the scope ends", func() {
					mustExec(t, lock, "SELECT pg_advisory_lock($1)", key)
					ctx, scope := p.Scope(context.Background())
					tx, err := scope.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES ($1)", i); err != nil {
						t.Fatal(err)
					}
					held := make(chan error, 1)
					go func() { held <- txHolder(ctx, tx, key) }()
					eventually(t, "the transaction's statement waiting for the lock", func() bool {
						var n int
						err := env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", env.AppName()).Scan(&n)
						return err == nil && n == 1
					})
					committed := make(chan error, 1)
					go func() { committed <- txCommitter(tx) }()
					eventually(t, "Commit waiting for the statement", func() bool {
						return parkedIn("dbctx_test.txCommitter", "database/sql.(*Tx).Commit")
					})
					ended := make(chan struct{})
					go func() { scopeEnder(scope); close(ended) }()
					eventually(t, "the scope's end waiting for the connection", func() bool {
						return parkedIn("dbctx_test.scopeEnder", "database/sql.(*Conn).Raw") ||
							parkedIn("dbctx_test.scopeEnder", "database/sql.(*Conn).grabConn") ||
							parkedIn("dbctx_test.scopeEnder", "database/sql.(*Conn).ExecContext")
					})
					mustExec(t, lock, "SELECT pg_advisory_unlock($1)", key)
					if err := <-held; err != nil {
						t.Logf("the transaction's statement: %v", err)
					}
					cerr := <-committed
					<-ended
					// The next scope, on the same connection: its
					// transaction is its own.
					err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
						return dbctx.Atomic(ctx, func(ctx context.Context) error {
							_, err := s.ExecContext(ctx, "INSERT INTO t VALUES ($1)", -i)
							return err
						})
					})
					if err != nil {
						t.Fatalf("the next scope: %v", err)
					}
					var mine, next int
					if err := env.Admin().QueryRow("SELECT count(*) FILTER (WHERE n = $1), count(*) FILTER (WHERE n = -$1) FROM "+env.Schema()+".t", i).Scan(&mine, &next); err != nil {
						t.Fatal(err)
					}
					if (cerr == nil) != (mine == 1) {
						t.Errorf("round %d: Commit returned %v; PostgreSQL has %d of its rows", i, cerr, mine)
					}
					if next != 1 {
						t.Errorf("round %d: the next scope's Atomic committed; PostgreSQL has %d of its rows", i, next)
					}
				})
			}
		})
	}
}

// Scope.Pgx applies the settings its context declares, then calls fn
// with the connection: a statement of another goroutine sharing the
// scope may not come between, or fn runs with that goroutine's settings
// (here a tenant another goroutine's Scope.Conn applied), or finds the
// connection busy with its rows (pgx's "conn busy", not ErrConnBusy).
// Such statements are refused with ErrConnBusy from the settings on, as
// they are while fn runs.
func TestPgxFnSettingsNotOvertaken(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "raw access with settings declared, outside a transaction, is refused behind a pooler")
	p, _ := newPool(t, nil)
	noHang(t, "goroutines sharing a scope", func() {
		ctx, scope := p.Scope(context.Background())
		defer scope.End()
		var wg sync.WaitGroup
		var stop atomic.Bool
		var wrong, busy, runs atomic.Int64
		wg.Go(func() {
			defer stop.Store(true)
			c := tenant.With(ctx, "a")
			for range 5000 {
				err := scope.Pgx(c, func(pc *pgx.Conn) error {
					var got string
					err := pc.QueryRow(c, "SELECT current_setting('app.tenant', true)").Scan(&got)
					if err == nil && got != "a" {
						wrong.Add(1)
					}
					return err
				})
				switch {
				case err == nil:
					runs.Add(1)
				case !errors.Is(err, dbctx.ErrConnBusy):
					if busy.Add(1) == 1 {
						t.Logf("Pgx: %v", err)
					}
				}
			}
		})
		for _, tn := range []string{"b", "c"} {
			wg.Go(func() {
				c := tenant.With(ctx, tn)
				for !stop.Load() {
					// Scope.Conn applies the goroutine's tenant.
					if _, err := scope.Conn(c); err != nil && !errors.Is(err, dbctx.ErrConnBusy) {
						t.Errorf("Conn: %v", err)
					}
					if rows, err := scope.Query(c, "SELECT 1"); err == nil {
						rows.Close()
					} else if !errors.Is(err, dbctx.ErrConnBusy) {
						t.Errorf("Query: %v", err)
					}
				}
			})
		}
		wg.Wait()
		if wrong.Load() > 0 || busy.Load() > 0 {
			t.Errorf("of %d Pgx calls that ran, fn saw another goroutine's tenant in %d; %d failed with an error other than ErrConnBusy", runs.Load(), wrong.Load(), busy.Load())
		}
	})
}

// A Do on a scope shared by goroutines runs its boundaries (CloseOld)
// only where the connection is idle: not while rows of another
// goroutine's statement are open, which the boundary cut short (their
// reader got "rows closed by the scope" for rows it never closed, with a
// data race on their buffers under -race) and whose connection it gave
// back under them. The Do's own statement meanwhile fails with
// ErrConnBusy, as any statement of the scope does while rows are open;
// the rows read to the end; and after them Do runs as before. Both
// styles of rows, both drivers where they exist.
func TestDoLeavesOtherGoroutinesRows(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, nil)
		type rows interface {
			Next() bool
			Err() error
			Close()
		}
		open := map[string]func(context.Context, *dbctx.Scope) (rows, error){
			"QueryContext": func(ctx context.Context, s *dbctx.Scope) (rows, error) {
				r, err := s.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000) g")
				if err != nil {
					return nil, err
				}
				return closer{r}, nil
			},
		}
		if drv == pgxDriver {
			open["Query"] = func(ctx context.Context, s *dbctx.Scope) (rows, error) {
				return s.Query(ctx, "SELECT g FROM generate_series(1, 1000) g")
			}
		}
		for name, open := range open {
			noHang(t, name, func() {
				ctx, scope := p.Scope(context.Background())
				defer scope.End()
				r, err := open(ctx, scope)
				if err != nil {
					t.Fatal(err)
				}
				done := make(chan error)
				go func() {
					done <- dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
						_, err := queryInt(ctx, s, "SELECT 1")
						return err
					})
				}()
				if err := <-done; !errors.Is(err, dbctx.ErrConnBusy) {
					t.Errorf("%s: Do on another goroutine while the rows are open: %v, want ErrConnBusy", name, err)
				}
				n := 0
				for r.Next() {
					n++
				}
				if err := r.Err(); err != nil || n != 1000 {
					t.Errorf("%s: the rows, after another goroutine's Do: %d read, %v", name, n, err)
				}
				r.Close()
				if err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT 1")
					return err
				}); err != nil {
					t.Errorf("%s: Do after the rows: %v", name, err)
				}
			})
		}
	})
}

// closer is *sql.Rows with a Close that returns nothing.
type closer struct{ *sql.Rows }

func (c closer) Close() { c.Rows.Close() }

// A statement of another goroutine that finds an Atomic pending (fn has
// run no statement yet) begins its transaction, with OnBegin, as fn's
// own first statement would; where fn returns meanwhile, on its own
// goroutine, the Atomic is over by the time the statement takes the
// scope again: there is nothing to begin, and OnBegin does not run (it
// was called with no context at all, outside any transaction). Nothing
// panics, and the statement runs.
func TestStatementAsAtomicEnds(t *testing.T) {
	t.Parallel()
	var outside atomic.Int64
	p, _ := newPool(t, &dbctx.Options{OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
		if ctx == nil {
			outside.Add(1)
			return errors.New("no context")
		}
		_, err := s.ExecContext(ctx, "SET LOCAL app.onbegin = 'in'")
		return err
	}})
	noHang(t, "statements as Atomic calls end", func() {
		ctx, scope := p.Scope(context.Background())
		defer scope.End()
		var stop atomic.Bool
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				for !stop.Load() {
					if _, err := queryInt(ctx, scope, "SELECT 1"); err != nil {
						t.Errorf("a statement of another goroutine: %v", err)
						return
					}
				}
			})
		}
		for range 8000 {
			if err := dbctx.Atomic(ctx, func(ctx context.Context) error { return nil }); err != nil {
				t.Errorf("Atomic: %v", err)
			}
		}
		stop.Store(true)
		wg.Wait()
	})
	if n := outside.Load(); n > 0 {
		t.Errorf("OnBegin ran %d times with no context, outside a transaction", n)
	}
}

// rowsReader reads rows of a scope shared with a goroutine that ends the
// scope meanwhile (which the doc says not to do): the name marks it.
func rowsReader(rows pgx.Rows, read *atomic.Int64) error {
	for rows.Next() {
		var n int
		var s string
		if err := rows.Scan(&n, &s); err != nil {
			rows.Close()
			return err
		}
		if _, err := rows.Values(); err != nil {
			rows.Close()
			return err
		}
		_ = rows.FieldDescriptions()
		read.Add(1)
	}
	return rows.Err()
}

// A scope that ends (End, a Detach, the Do that made it returning) while
// another goroutine reads rows of it, which the doc says not to do,
// cuts the rows short: the reader gets an error that says so, from Scan
// or Err, and nothing races or panics. pgx's rows (Query, and a batch's)
// were scanned outside their lock, as the boundary closed them and the
// connection's next user read into the buffers Scan was reading: -race
// saw it, and pgx's Scan could panic (index out of range).
func TestEndWhileRowsRead(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 2})
	const q = "SELECT g, repeat('x', g % 50) FROM generate_series(1, 100000) g"
	for round := range 20 {
		noHang(t, "rows read as the scope ends", func() {
			ctx, scope := p.Scope(context.Background())
			var rows pgx.Rows
			var err error
			if round%2 == 0 {
				rows, err = scope.Query(ctx, q)
			} else {
				b := &pgx.Batch{}
				b.Queue(q)
				br := scope.SendBatch(ctx, b)
				defer br.Close()
				rows, err = br.Query()
			}
			if err != nil {
				t.Fatal(err)
			}
			var read atomic.Int64
			done := make(chan error, 1)
			go func() { done <- rowsReader(rows, &read) }()
			eventually(t, "rows read", func() bool { return read.Load() >= 10 })
			scope.End()
			// Another unit takes the connection and reads.
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := queryInt(ctx, s, "SELECT count(*) FROM generate_series(1, 1000)")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err == nil && read.Load() < 100000 {
				t.Errorf("%d rows of 100000 read, then no error: rows cut short read as exhausted", read.Load())
			}
		})
	}
}

// OnBegin whose statement runs with a context of its own (not derived
// from the one it gets: context.Background, a context kept from before)
// on a scope used by one goroutine: the transaction begins, the statement
// runs in it (PostgreSQL's current_setting sees what it set), nothing
// waits. The gate that holds the unit's other goroutines while OnBegin
// runs held OnBegin's own statement, for ever, waiting for OnBegin to
// return.
func TestOnBeginOwnContext(t *testing.T) {
	t.Parallel()
	for _, drv := range []string{pgxDriver, otherDriver} {
		for _, how := range []string{"Atomic", "BeginTx"} {
			t.Run(drv+"/"+how, func(t *testing.T) {
				t.Parallel()
				p, _ := newPoolWith(t, drv, &dbctx.Options{OnBegin: func(_ context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(context.Background(), "SELECT set_config('app.onbegin', 'on', true)")
					return err
				}})
				noHang(t, "the unit of work", func() {
					ctx, scope := p.Scope(context.Background())
					defer scope.End()
					var got string
					var err error
					switch how {
					case "Atomic":
						err = dbctx.Atomic(ctx, func(ctx context.Context) error {
							got, err = racerStatement(ctx, scope)
							return err
						})
					case "BeginTx":
						var tx *sql.Tx
						if tx, err = scope.BeginTx(ctx, nil); err == nil {
							err = tx.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.onbegin', true), '')").Scan(&got)
							if cerr := tx.Commit(); err == nil {
								err = cerr
							}
						}
					}
					if err != nil {
						t.Fatalf("%s: %v", how, err)
					}
					if got != "on" {
						t.Errorf("the transaction's statement saw app.onbegin %q, want OnBegin's \"on\"", got)
					}
				})
			})
		}
	}
}
