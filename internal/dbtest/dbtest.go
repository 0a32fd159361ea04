// Package dbtest holds the test helpers shared by the packages that test
// against a dbctx pool: a pool over a schema of its own whose invariants
// are checked when the test ends, and polling for conditions.
package dbtest

import (
	"context"
	"database/sql"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// NewPool returns a pool over a fresh schema, and checks the invariants
// of DESIGN.md when the test ends: no slot in use, nothing pinned, nobody
// waiting, nothing of ours idle in a transaction.
func NewPool(t testing.TB, opts *dbctx.Options) (*dbctx.Pool, *pgtest.Env) {
	t.Helper()
	env := pgtest.New(t)
	p := dbctx.New(env.Open(t), opts)
	t.Cleanup(func() {
		Clean(t, p, env)
		p.Close()
	})
	return p, env
}

// NewSecondPool returns a pool over a second database of env's server
// (pgtest.Env.Database), checked as NewPool's is: for tests of one unit
// of work on two databases.
func NewSecondPool(t testing.TB, env *pgtest.Env, opts *dbctx.Options) *dbctx.Pool {
	t.Helper()
	db, err := sql.Open("pgx", env.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	p := dbctx.New(db, opts)
	t.Cleanup(func() {
		Clean(t, p, env)
		p.Close()
	})
	return p
}

// Clean fails t unless the pool holds nothing and nothing of env's is
// idle in a transaction.
func Clean(t testing.TB, p *dbctx.Pool, env *pgtest.Env) {
	t.Helper()
	st := p.Stats()
	if st.InUse != 0 || st.Pinned != 0 || st.Waiting != 0 {
		t.Errorf("pool not clean at end: in use %d, pinned %d, waiting %d", st.InUse, st.Pinned, st.Waiting)
	}
	// A backend whose client closed the socket mid-transaction may show
	// idle in transaction until it notices; wait for it, bounded.
	deadline := time.Now().Add(5 * time.Second)
	for n := env.IdleInTransaction(t); n != 0; n = env.IdleInTransaction(t) {
		if time.Now().After(deadline) {
			t.Errorf("%d connections of ours idle in transaction", n)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Eventually polls cond until it holds, failing t after 30 seconds: a
// bound for what never comes, far above what a loaded machine takes (CI
// has seen a load average of 20 on 2 cores).
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if Wait(30*time.Second, cond) != nil {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// NoHang runs f and fails t if it has not returned within a minute: what
// it tests must never block forever (a wait inside database/sql, a
// deadlock, a callback nothing cancels), and a minute is beyond any wait
// of the tests' own.
func NoHang(t testing.TB, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		buf := make([]byte, 1<<20)
		t.Fatalf("%s hung; goroutines:\n%s", what, buf[:runtime.Stack(buf, true)])
	}
}

// errTimedOut is Wait's error.
var errTimedOut = errors.New("dbtest: timed out")

// Wait polls cond until it holds, and returns an error if it does not
// within timeout: for a caller that says more than Eventually when it
// fails.
func Wait(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errTimedOut
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// ActiveQueries counts env's backends running a statement that starts
// with prefix.
func ActiveQueries(t testing.TB, env *pgtest.Env, prefix string) int {
	t.Helper()
	n, err := activeQueries(context.Background(), env, prefix)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func activeQueries(ctx context.Context, env *pgtest.Env, prefix string) (int, error) {
	var n int
	err := env.Admin().QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity
		WHERE usename = $1 AND state = 'active' AND query LIKE $2`,
		env.Role(), prefix+"%").Scan(&n)
	return n, err
}

// WhenActive calls do, on a goroutine of its own, once one of env's
// backends runs a statement that starts with prefix, and closes the
// channel it returns when do has returned. Meanwhile the test's goroutine
// runs the statement. A failure to see it within 10 seconds is reported
// with t.Error, as a goroutine other than the test's must (t.Fatal
// there would not stop the test), and do is not called.
func WhenActive(t testing.TB, env *pgtest.Env, prefix string, do func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for {
			n, err := activeQueries(ctx, env, prefix)
			switch {
			case err != nil:
				t.Errorf("waiting for %q to run: %v", prefix, err)
				return
			case n > 0:
				do()
				return
			}
			select {
			case <-ctx.Done():
				t.Errorf("waiting for %q to run: %v", prefix, ctx.Err())
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	return done
}

// KillWhenActive is [WhenActive] that terminates env's backends, and
// reports on the channel how many it terminated (-1 where it failed).
func KillWhenActive(t testing.TB, env *pgtest.Env, prefix string) <-chan int {
	killed := make(chan int, 1)
	n := -1
	done := WhenActive(t, env, prefix, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var err error
		if n, err = env.TerminateContext(ctx); err != nil {
			t.Errorf("terminating the backends: %v", err)
			n = -1
		}
	})
	go func() {
		<-done
		killed <- n
	}()
	return killed
}
