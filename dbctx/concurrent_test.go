package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/jackc/pgx/v5"
)

// noHang is dbtest.NoHang.
func noHang(t *testing.T, what string, f func()) {
	t.Helper()
	dbtest.NoHang(t, what, f)
}

// A scope shared by the goroutines of one unit of work (an errgroup in a
// handler) keeps one connection, whatever their number and the pool's
// slots: their statements run one after another on it, all succeed, and
// nothing hangs, races or panics.
func TestScopeSharedByGoroutines(t *testing.T) {
	t.Parallel()
	for _, slots := range []int{1, 2} {
		for _, n := range []int{2, 8, 16} {
			t.Run(fmt.Sprintf("%d slots, %d goroutines", slots, n), func(t *testing.T) {
				t.Parallel()
				p, env := newPool(t, &dbctx.Options{MaxWorkers: slots})
				mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
				ctx, scope := p.Scope(context.Background())
				defer scope.End()
				var maxPinned, inserts atomic.Int64
				pids := make([]int, n)
				errs := make([]error, n)
				noHang(t, "the goroutines' statements", func() {
					// As errgroup.WithContext does: a context of their own.
					gctx, cancel := context.WithCancel(ctx)
					defer cancel()
					var wg sync.WaitGroup
					for i := range n {
						wg.Go(func() {
							s := dbctx.From(gctx)
							for j := range 5 {
								var err error
								switch (i + j) % 4 {
								case 0:
									err = s.QueryRowContext(gctx, "SELECT pg_backend_pid()").Scan(&pids[i])
								case 1:
									inserts.Add(1)
									_, err = s.ExecContext(gctx, "INSERT INTO t VALUES ($1)", i)
								case 2:
									err = s.QueryRow(gctx, "SELECT pg_backend_pid()").Scan(&pids[i])
								case 3:
									inserts.Add(1)
									_, err = s.Exec(gctx, "INSERT INTO t VALUES ($1)", i)
								}
								if err != nil {
									errs[i] = err
									return
								}
								if st := p.Stats(); int64(st.Pinned) > maxPinned.Load() {
									maxPinned.Store(int64(st.Pinned))
								}
							}
						})
					}
					wg.Wait()
				})
				for i, err := range errs {
					if err != nil {
						t.Errorf("goroutine %d: %v", i, err)
					}
				}
				for i, pid := range pids {
					if pid != pids[0] {
						t.Errorf("goroutine %d ran on backend %d, goroutine 0 on %d: one scope, one connection", i, pid, pids[0])
					}
				}
				if maxPinned.Load() > 1 {
					t.Errorf("the scope pinned %d connections at once", maxPinned.Load())
				}
				var rows int
				if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&rows); err != nil || int64(rows) != inserts.Load() {
					t.Errorf("%d rows (%v), want %d", rows, err, inserts.Load())
				}
			})
		}
	}
}

// Rows left open by one goroutine hold the connection: a statement of
// another fails at once with ErrConnBusy, and succeeds once they are
// closed. QueryRow and QueryRowContext hold nothing.
func TestRowsOpenRefuseOthers(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	ctx, scope := p.Scope(context.Background())
	defer scope.End()
	open := map[string]func() (func(), error){
		"QueryContext": func() (func(), error) {
			rows, err := scope.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000) g")
			if err != nil {
				return nil, err
			}
			return func() { rows.Close() }, nil
		},
		"Query (pgx)": func() (func(), error) {
			rows, err := scope.Query(ctx, "SELECT g FROM generate_series(1, 1000) g")
			if err != nil {
				return nil, err
			}
			return rows.Close, nil
		},
	}
	for name, o := range open {
		noHang(t, name, func() {
			closeRows, err := o()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			done := make(chan error)
			go func() {
				_, err := queryInt(ctx, scope, "SELECT 1")
				done <- err
			}()
			if err := <-done; !errors.Is(err, dbctx.ErrConnBusy) {
				t.Errorf("%s open, another goroutine's statement: %v, want ErrConnBusy", name, err)
			}
			if _, err := scope.Exec(ctx, "SELECT 1"); !errors.Is(err, dbctx.ErrConnBusy) {
				t.Errorf("%s open, the same goroutine's statement: %v, want ErrConnBusy", name, err)
			}
			closeRows()
			if n, err := queryInt(ctx, scope, "SELECT 2"); err != nil || n != 2 {
				t.Errorf("%s closed: %d, %v", name, n, err)
			}
		})
	}
	// Rows read to the end free the connection without Close.
	rows, err := scope.Query(ctx, "SELECT 1")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
	}
	if n, err := queryInt(ctx, scope, "SELECT 3"); err != nil || n != 3 {
		t.Errorf("after rows read to the end: %d, %v", n, err)
	}
	// A row never scanned holds nothing.
	scope.QueryRowContext(ctx, "SELECT 1")
	scope.QueryRow(ctx, "SELECT 1")
	if n, err := queryInt(ctx, scope, "SELECT 4"); err != nil || n != 4 {
		t.Errorf("after rows never scanned: %d, %v", n, err)
	}
}

// Goroutines inside Atomic run their statements in its transaction: all
// of them commit with it, or none.
func TestAtomicSharedByGoroutines(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	ctx, scope := p.Scope(context.Background())
	defer scope.End()
	for _, fail := range []bool{false, true} {
		noHang(t, "Atomic's goroutines", func() {
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				var wg sync.WaitGroup
				errs := make(chan error, 8)
				for i := range 8 {
					wg.Go(func() {
						if _, err := scope.ExecContext(ctx, "INSERT INTO t VALUES ($1)", i); err != nil {
							errs <- err
						}
					})
				}
				wg.Wait()
				close(errs)
				if err := <-errs; err != nil {
					return err
				}
				if fail {
					return errors.New("roll back")
				}
				return nil
			})
			if fail != (err != nil) {
				t.Fatalf("Atomic (fail %v): %v", fail, err)
			}
		})
	}
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 8 {
		t.Fatalf("%d rows, %v; want the 8 of the committed Atomic", n, err)
	}
}

// A goroutine of Atomic's fn that closes its rows as fn returns (too late:
// they belong closed before it does) races nothing in the scope: the
// Close records what the rows' round trip applied (here a setting of
// their own), and Atomic's end either comes after it and commits, or
// finds the rows open and fails, its transaction lost with the
// connection. What PostgreSQL committed agrees with what Atomic returned,
// through each kind of result a scope hands out; -race judges the rest.
func TestAtomicEndsAsRowsClose(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	const q = "SELECT current_setting('app.tenant')"
	open := map[string]func(ctx context.Context, s *dbctx.Scope) (func(), error){
		"QueryContext": func(ctx context.Context, s *dbctx.Scope) (func(), error) {
			rows, err := s.QueryContext(ctx, q)
			if err != nil {
				return nil, err
			}
			return func() { rows.Close() }, nil
		},
		"Query": func(ctx context.Context, s *dbctx.Scope) (func(), error) {
			rows, err := s.Query(ctx, q)
			return rows.Close, err
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope) (func(), error) {
			b := &pgx.Batch{}
			b.Queue(q)
			br := s.SendBatch(ctx, b)
			return func() { br.Close() }, nil
		},
	}
	reported := map[int]bool{}
	n := 0
	for name, open := range open {
		for range 20 {
			n++
			i := n
			noHang(t, name, func() {
				err := p.Do(tenant.With(context.Background(), "a"), func(ctx context.Context, s *dbctx.Scope) error {
					var closed sync.WaitGroup
					err := dbctx.Atomic(ctx, func(ctx context.Context) error {
						if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES ($1)", i); err != nil {
							return err
						}
						closeRows, err := open(tenant.With(ctx, "b"), s)
						if err != nil {
							return err
						}
						release := make(chan struct{})
						closed.Go(func() {
							<-release
							closeRows()
						})
						close(release)
						return nil
					})
					closed.Wait()
					switch {
					case err == nil:
						reported[i] = true
					case !errors.Is(err, dbctx.ErrConnBusy):
						t.Errorf("%s: Atomic: %v; want nil or ErrConnBusy", name, err)
					}
					return nil
				})
				if err != nil {
					t.Errorf("%s: Do: %v", name, err)
				}
			})
		}
	}
	rows, err := env.Admin().Query("SELECT n FROM " + env.Schema() + ".t")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	committed := map[int]bool{}
	for rows.Next() {
		var i int
		if err := rows.Scan(&i); err != nil {
			t.Fatal(err)
		}
		committed[i] = true
	}
	for i := 1; i <= n; i++ {
		if committed[i] != reported[i] {
			t.Errorf("unit %d: committed %v, Atomic reported success %v", i, committed[i], reported[i])
		}
	}
}

// Do from several goroutines on one scope: the outermost Do's boundaries
// run once they have all returned, and the slot and connection are free
// afterwards.
func TestDoFromGoroutines(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	ctx, scope := p.Scope(context.Background())
	defer scope.End()
	noHang(t, "Do from goroutines", func() {
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT 1")
					return err
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
	})
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
		t.Fatalf("after every Do: %+v", st)
	}
}
