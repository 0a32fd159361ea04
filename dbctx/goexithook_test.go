package dbctx_test

import (
	"context"
	"database/sql"
	"runtime"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A hook that ends its goroutine (runtime.Goexit: t.FailNow, or a
// require.NoError, in a test's hook) leaves the pool as a hook's panic
// does: the unit's slot and connection go back, and the next unit of work
// runs.
func TestGoexitInHook(t *testing.T) {
	t.Parallel()
	for _, hook := range []string{"OnAcquire", "OnBegin", "OnRelease", "OnWait", "OnPin", "OnCommit"} {
		t.Run(hook, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			db := env.Open(t)
			db.SetMaxOpenConns(1)
			var armed = make(chan struct{}, 1)
			armed <- struct{}{}
			exit := func() {
				select {
				case <-armed:
					runtime.Goexit()
				default:
				}
			}
			opts := &dbctx.Options{MaxWorkers: 1}
			switch hook {
			case "OnAcquire":
				opts.OnAcquire = func(context.Context, *sql.Conn) error { exit(); return nil }
			case "OnBegin":
				opts.OnBegin = func(context.Context, *dbctx.Scope) error { exit(); return nil }
			case "OnRelease":
				opts.OnRelease = func(context.Context, *sql.Conn) error { exit(); return nil }
			case "OnWait":
				opts.OnWait = func(context.Context, dbctx.Wait) { exit() }
			case "OnPin":
				opts.OnPin = func(context.Context, dbctx.Pin) { exit() }
			}
			p := dbctx.New(db, opts)
			t.Cleanup(func() { dbtest.Clean(t, p, env); p.Close() })
			unit := func(ctx context.Context) error {
				return p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					if hook == "OnBegin" || hook == "OnCommit" {
						return dbctx.Atomic(ctx, func(ctx context.Context) error {
							if hook == "OnCommit" {
								dbctx.OnCommit(ctx, exit)
							}
							_, err := s.ExecContext(ctx, "SELECT 1")
							return err
						})
					}
					_, err := s.ExecContext(ctx, "SELECT 1")
					return err
				})
			}
			if hook == "OnWait" {
				// A wait needs the slot taken: hold it in another unit.
				held := make(chan struct{})
				release := make(chan struct{})
				go p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					s.ExecContext(ctx, "SELECT 1")
					close(held)
					<-release
					return nil
				})
				<-held
				exited := make(chan struct{})
				go func() { defer close(exited); unit(context.Background()) }()
				dbtest.Eventually(t, "the waiter queued", func() bool { return p.Stats().Waiting == 1 })
				close(release)
				<-exited
			} else {
				exited := make(chan struct{})
				go func() { defer close(exited); unit(context.Background()) }()
				<-exited
			}
			dbtest.Eventually(t, "the unit's slot and connection back", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Pinned == 0 && db.Stats().InUse == 0
			})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := unit(ctx); err != nil {
				t.Fatalf("the next unit: %v", err)
			}
		})
	}
}
