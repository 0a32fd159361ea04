package dbctx_test

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A Do whose function ends its goroutine (runtime.Goexit: t.FailNow in
// a test) ends its scope all the same: its slot and connection go back
// (a connection handed out with Scope.Conn is discarded), a goroutine of
// fn's kept past it meets ErrScopeEnded rather than take a slot and a
// connection nobody gives back, and OnDo's done is told.
func TestGoexitInDo(t *testing.T) {
	t.Parallel()
	for _, what := range []string{"statement", "conn", "pgx", "after", "after/no OnDo"} {
		t.Run(what, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			db := env.Open(t)
			dones := make(chan error, 1)
			opts := &dbctx.Options{OnDo: func(ctx context.Context) (context.Context, func(error)) {
				return ctx, func(err error) { dones <- err }
			}}
			if what == "after/no OnDo" {
				opts = nil
			}
			p := dbctx.New(db, opts)
			t.Cleanup(func() { dbtest.Clean(t, p, env); p.Close() })
			exited := make(chan struct{})
			var scope *dbctx.Scope
			var scopeCtx context.Context
			go func() {
				defer close(exited)
				p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					scope, scopeCtx = s, ctx
					if _, err := s.ExecContext(ctx, "SELECT pg_advisory_lock(7)"); err != nil {
						return err
					}
					switch what {
					case "conn":
						if _, err := s.Conn(ctx); err != nil {
							return err
						}
					case "pgx":
						if err := s.Pgx(ctx, func(*pgx.Conn) error { return nil }); err != nil {
							return err
						}
					}
					runtime.Goexit()
					return nil
				})
			}()
			<-exited
			if strings.HasPrefix(what, "after") {
				// A goroutine of fn's, kept past it, finds the scope ended.
				if _, err := scope.ExecContext(scopeCtx, "SELECT 1"); !errors.Is(err, dbctx.ErrScopeEnded) {
					t.Errorf("a statement on the scope after: %v, want ErrScopeEnded", err)
				}
			}
			dbtest.Eventually(t, "the scope ended", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Pinned == 0 && db.Stats().InUse == 0
			})
			// A connection handed out (conn, pgx) is closed, not reset:
			// its backend lets the lock go as it exits, a moment later.
			// (Behind a pooler the server connection lives on, with the
			// session's lock: what TransactionPooling refuses.)
			if !pgtest.Pooled() {
				dbtest.Eventually(t, "the advisory lock let go", func() bool {
					var locks int
					if err := env.Admin().QueryRow(`SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
						WHERE l.locktype = 'advisory' AND a.usename = $1`, env.Role()).Scan(&locks); err != nil {
						t.Fatal(err)
					}
					return locks == 0
				})
			}
			if opts == nil {
				return
			}
			select {
			case err := <-dones:
				if err == nil {
					t.Errorf("OnDo's done told nil")
				}
			default:
				t.Errorf("OnDo's done not called")
			}
		})
	}
}
