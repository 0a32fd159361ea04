package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// poolPID returns the backend a fresh scope of p gets.
func poolPID(t *testing.T, p *dbctx.Pool) int {
	t.Helper()
	var pid int
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) (err error) {
		pid, err = backendPID(ctx, s)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return pid
}

// TestKept: a connection given back clean is kept for the next scope,
// which gets the same session, and goes back to the *sql.DB when no scope
// takes it.
func TestKept(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	db := p.DB()
	pid := poolPID(t, p)
	// The keep may already have given it back (a slow machine); then the
	// *sql.DB hands out the same idle connection, as before.
	if got := poolPID(t, p); got != pid {
		t.Errorf("second scope on backend %d, want the kept %d", got, pid)
	}
	dbtest.Eventually(t, "the kept connection back in the *sql.DB", func() bool {
		return p.Stats().Kept == 0 && db.Stats().InUse == 0 && db.Stats().Idle == 1
	})
	if got := poolPID(t, p); got != pid {
		t.Errorf("third scope on backend %d, want %d", got, pid)
	}
	st := p.Stats()
	if st.Acquired != 3 || st.GivenBack != 3 || st.Discarded.Total() != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestKeptFreeForDirectUse: code using the *sql.DB directly gets a
// connection even when every connection the *sql.DB may open is kept.
func TestKeptFreeForDirectUse(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 2}) // the *sql.DB opens at most 2
	db := p.DB()
	for range 20 {
		// Two scopes pin at once, so both connections are kept after.
		var wg sync.WaitGroup
		var ready sync.WaitGroup
		ready.Add(2)
		for range 2 {
			wg.Go(func() {
				if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT 1")
					ready.Done()
					ready.Wait()
					return err
				}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var n int
		err := db.QueryRowContext(ctx, "SELECT 7").Scan(&n)
		cancel()
		if err != nil || n != 7 {
			t.Fatalf("direct query with both connections kept: %d, %v", n, err)
		}
	}
	if st := db.Stats(); st.OpenConnections > 2 {
		t.Errorf("%d connections open, want at most 2", st.OpenConnections)
	}
}

// TestKeptLifetime: connections in constant use still go back to the
// *sql.DB, so that its own limits apply: here SetConnMaxLifetime, which
// replaces the session.
func TestKeptLifetime(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "watches the server session change under SetConnMaxLifetime")
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	p.DB().SetConnMaxLifetime(50 * time.Millisecond)
	first := poolPID(t, p)
	dbtest.Eventually(t, "a new session under constant use", func() bool {
		return poolPID(t, p) != first
	})
}

// TestCloseGivesKeptBack: Close gives kept connections back at once.
func TestCloseGivesKeptBack(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	p.SetKeepIdle(time.Hour)
	poolPID(t, p)
	if st := p.Stats(); st.Kept != 1 || p.DB().Stats().InUse != 1 {
		t.Fatalf("kept %d, in use in the *sql.DB %d; want 1, 1", st.Kept, p.DB().Stats().InUse)
	}
	p.Close()
	if st := p.Stats(); st.Kept != 0 || p.DB().Stats().InUse != 0 {
		t.Errorf("after Close: kept %d, in use in the *sql.DB %d; want 0, 0", st.Kept, p.DB().Stats().InUse)
	}
}

// tenantPool returns a pool on a schema and role of their own
// under row-level security (rls), on a direct connection: a session carries
// its settings from one transaction to the next only there.
func tenantPool(t *testing.T, opts *dbctx.Options) *dbctx.Pool {
	t.Helper()
	pgtest.SkipPooled(t, "a session keeps its settings between transactions only on a direct connection")
	env := newEnv(t)
	rls(t, env)
	return poolOn(t, env, env.Open(t), opts)
}

// keptTenants returns a pool of three slots on a schema under row-level
// security, whose connections stay kept for good (nothing goes back to
// the *sql.DB while the test looks, however slow the machine), after one
// scope per tenant of order, all at once, gave its connection back in
// that order: order[i]'s on backend pids[i], the last the newest kept.
func keptTenants(t *testing.T, order ...string) (p *dbctx.Pool, pids []int) {
	t.Helper()
	p = tenantPool(t, &dbctx.Options{MaxWorkers: len(order), Logger: quiet()})
	p.SetKeepFor(time.Hour)
	p.SetKeepIdle(time.Hour)
	pids = make([]int, len(order))
	var ready, wg sync.WaitGroup
	release := make([]chan struct{}, len(order))
	done := make([]chan struct{}, len(order))
	ready.Add(len(order))
	for i, tn := range order {
		release[i], done[i] = make(chan struct{}), make(chan struct{})
		wg.Go(func() {
			defer close(done[i])
			err := p.Do(tenant.With(context.Background(), tn), func(ctx context.Context, s *dbctx.Scope) error {
				err := s.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pids[i])
				ready.Done()
				<-release[i]
				return err
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	ready.Wait()
	for i := range order {
		close(release[i])
		<-done[i]
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if st := p.Stats(); st.Kept != len(order) {
		t.Fatalf("%d connections kept, want %d", st.Kept, len(order))
	}
	return p, pids
}

// TestKeptForItsSettings: of the connections kept, a scope gets one whose
// session carries its settings already, not merely the one given back
// last, and PostgreSQL sees its own tenant on it.
func TestKeptForItsSettings(t *testing.T) {
	t.Parallel()
	// Three scopes at once, one per tenant: three connections, kept after
	// with their tenants.
	tenants := []string{"t1", "t2", "t3"}
	p, held := keptTenants(t, tenants...)
	pids := map[string]int{}
	for i, tn := range tenants {
		pids[tn] = held[i]
	}
	type seen struct {
		pid    int
		tenant string
	}
	lookup := func(ctx context.Context, s *dbctx.Scope) (got seen, err error) {
		err = s.QueryRowContext(ctx, "SELECT pg_backend_pid(), current_setting('app.tenant')").Scan(&got.pid, &got.tenant)
		return got, err
	}
	// One after another, never the tenant of the connection given back
	// last.
	applied := p.Stats().Settings
	if applied != 3 {
		t.Errorf("Stats.Settings = %d after three units on fresh connections, want 3", applied)
	}
	for i := range 12 {
		tn := tenants[(2*i)%len(tenants)]
		var got seen
		if err := p.Do(tenant.With(context.Background(), tn), func(ctx context.Context, s *dbctx.Scope) (err error) {
			got, err = lookup(ctx, s)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if got.tenant != tn {
			t.Fatalf("unit %d of tenant %s saw tenant %q", i, tn, got.tenant)
		}
		if got.pid != pids[tn] {
			t.Errorf("unit %d of tenant %s on backend %d, want %d, which carries its tenant", i, tn, got.pid, pids[tn])
		}
	}
	if n := p.Stats().Settings - applied; n != 0 {
		t.Errorf("Stats.Settings: %d more round trips applied settings, want none", n)
	}
}

// A unit whose tenant no kept connection carries takes one whose tenant
// another kept connection carries too, rather than the only one of a
// tenant: here the newest kept connection is t2's only one, and the
// t3 unit takes one of t1's two, so that the t2 unit after it finds its own.
func TestKeptVictimDuplicate(t *testing.T) {
	t.Parallel()
	// Three scopes at once (t1, t1, t2), given back in that order: t2's
	// connection is the newest kept.
	p, pids := keptTenants(t, "t1", "t1", "t2")
	lookup := func(tn string) (pid int, seen string) {
		t.Helper()
		if err := p.Do(tenant.With(context.Background(), tn), func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, "SELECT pg_backend_pid(), current_setting('app.tenant')").Scan(&pid, &seen)
		}); err != nil {
			t.Fatal(err)
		}
		if seen != tn {
			t.Fatalf("a unit of tenant %s saw tenant %q", tn, seen)
		}
		return pid, seen
	}
	applied := p.Stats().Settings
	if pid, _ := lookup("t3"); pid == pids[2] {
		t.Errorf("the t3 unit took t2's only connection (backend %d), where t1 had two", pid)
	}
	if n := p.Stats().Settings - applied; n != 1 {
		t.Errorf("the t3 unit: %d round trips applied settings, want 1", n)
	}
	applied = p.Stats().Settings
	if pid, _ := lookup("t2"); pid != pids[2] {
		t.Errorf("the t2 unit on backend %d, want %d, which carries its tenant", pid, pids[2])
	}
	if pid, _ := lookup("t1"); pid != pids[0] && pid != pids[1] {
		t.Errorf("the t1 unit on backend %d, want %d or %d, which carry its tenant", pid, pids[0], pids[1])
	}
	if n := p.Stats().Settings - applied; n != 0 {
		t.Errorf("the t2 and t1 units: %d round trips applied settings, want none", n)
	}
}

// TestHandOffToCarriedSettings: a slot given back goes past the head of
// the queue to a waiter whose tenant the kept connection carries, so that
// it sends no set_config; the head is passed over twice at most, then
// served before those behind it. PostgreSQL tells each unit's tenant.
func TestHandOffToCarriedSettings(t *testing.T) {
	t.Parallel()
	p := tenantPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: time.Minute, Logger: quiet()})
	p.SetKeepFor(time.Hour)
	p.SetKeepIdle(time.Hour)
	lookup := func(tn string) func(ctx context.Context, s *dbctx.Scope) error {
		return func(ctx context.Context, s *dbctx.Scope) error {
			var seen string
			if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&seen); err != nil {
				return err
			}
			if seen != tn {
				t.Errorf("a unit of tenant %s saw tenant %q", tn, seen)
			}
			return nil
		}
	}
	// The slot's holder leaves t1 on its connection.
	hold, held := make(chan struct{}), make(chan struct{})
	holder := make(chan error, 1)
	go func() {
		holder <- p.Do(tenant.With(context.Background(), "t1"), func(ctx context.Context, s *dbctx.Scope) error {
			err := lookup("t1")(ctx, s)
			close(held)
			<-hold
			return err
		})
	}()
	<-held
	// Queued in this order: t2 (head), t1, t1, t1.
	queued := []string{"t2", "t1", "t1", "t1"}
	ctxs := make([]context.Context, len(queued))
	for i, tn := range queued {
		ctxs[i] = tenant.With(context.Background(), tn)
	}
	ran := queueInOrder(t, p, ctxs, func(i int) func(context.Context, *dbctx.Scope) error { return lookup(queued[i]) })
	applied := p.Stats().Settings
	close(hold)
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
	// Two t1 units go first; the t2 head, passed over twice, then goes
	// before the last t1 unit, which sets t1 again.
	if got := ran(); fmt.Sprint(got) != "[1 2 0 3]" {
		t.Errorf("slots went to the queued callers in order %v, want [1 2 0 3]", got)
	}
	if n := p.Stats().Settings - applied; n != 2 {
		t.Errorf("%d round trips applied settings, want 2 (t2's, then t1's again)", n)
	}
}

// TestHandOffUnderContention: many units of a few tenants on two slots,
// as fast as they can, with slots handed past the queue's head: every
// statement sees its own tenant, no caller waits out its timeout, and
// nothing is left queued or held.
func TestHandOffUnderContention(t *testing.T) {
	t.Parallel()
	const slots, callers, calls = 2, 12, 60
	p := tenantPool(t, &dbctx.Options{MaxWorkers: slots, MaxWaiting: callers, WaitTimeout: time.Minute, Logger: quiet()})
	var wg sync.WaitGroup
	for c := range callers {
		tn := fmt.Sprintf("t%d", c%3+1)
		wg.Go(func() {
			ctx := tenant.With(context.Background(), tn)
			for range calls {
				var seen string
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					return s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&seen)
				})
				if err != nil {
					t.Error(err)
					return
				}
				if seen != tn {
					t.Errorf("a unit of tenant %s saw tenant %q", tn, seen)
					return
				}
			}
		})
	}
	wg.Wait()
	if st := p.Stats(); st.InUse != 0 || st.Waiting != 0 || st.Busy != 0 {
		t.Fatalf("after: %+v", st)
	}
}

// Pool.Close lets a scope that holds a slot finish: its statements after
// Close run and return their results, through every path (QueryRowContext
// and QueryContext were told ErrPoolClosed for an INSERT PostgreSQL had
// run), and on both drivers.
func TestScopeFinishesAfterClose(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		env := newEnv(t)
		mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (id serial, n int)")
		paths := map[string]func(ctx context.Context, s *dbctx.Scope) (int, error){
			"QueryRowContext": func(ctx context.Context, s *dbctx.Scope) (id int, err error) {
				err = s.QueryRowContext(ctx, "INSERT INTO t (n) VALUES (1) RETURNING id").Scan(&id)
				return id, err
			},
			"QueryContext": func(ctx context.Context, s *dbctx.Scope) (id int, err error) {
				rows, err := s.QueryContext(ctx, "INSERT INTO t (n) VALUES (2) RETURNING id")
				if err != nil {
					return 0, err
				}
				defer rows.Close()
				for rows.Next() {
					err = rows.Scan(&id)
				}
				return id, errors.Join(err, rows.Err())
			},
		}
		for name, run := range paths {
			p := poolOn(t, env, openWith(t, env, drv), &dbctx.Options{MaxWorkers: 2})
			var id int
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
					return err
				}
				p.Close() // a shutdown begins while the unit runs
				var err error
				id, err = run(ctx, s)
				return err
			})
			var n int
			if qerr := env.Admin().QueryRow("SELECT count(*) FROM "+env.Schema()+".t WHERE id = $1", id).Scan(&n); err != nil || qerr != nil || id == 0 || n != 1 {
				t.Errorf("%s after Close: id %d, %v; PostgreSQL has it %d times (%v)", name, id, err, n, qerr)
			}
		}
	})
}
