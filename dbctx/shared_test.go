package dbctx_test

import (
	"context"
	"database/sql"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
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
