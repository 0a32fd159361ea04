package dbctx_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// twoPools returns pools over two databases of the same server (env's
// and a second one), and a context carrying a scope of each (p2's
// innermost), with ctx1 carrying p1's alone; the scopes end with the test.
func twoPools(t *testing.T) (p1, p2 *dbctx.Pool, ctx1, ctx context.Context, s1, s2 *dbctx.Scope) {
	t.Helper()
	p1, p2 = twoDatabases(t, newEnv(t))
	ctx1, s1 = p1.Scope(context.Background())
	ctx, s2 = p2.Scope(ctx1)
	t.Cleanup(s1.End) // before the pools' checks, which run after
	t.Cleanup(s2.End)
	return p1, p2, ctx1, ctx, s1, s2
}

// twoDatabases returns pools over two databases of env's server: env's,
// and a second one.
func twoDatabases(t *testing.T, env *pgtest.Env) (p1, p2 *dbctx.Pool) {
	t.Helper()
	p1 = poolOn(t, env, env.Open(t), &dbctx.Options{MaxWorkers: 2})
	p2 = poolOn(t, env, openDSN(t, env.Database(t)), &dbctx.Options{MaxWorkers: 2})
	return p1, p2
}

func currentDB(ctx context.Context, t *testing.T, s *dbctx.Scope) string {
	t.Helper()
	var db string
	if err := s.QueryRowContext(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	return db
}

// A context carries one scope per pool: each pool finds its own, From the
// innermost; both reach their own database (PostgreSQL says which);
// CloseOld cleans up both.
func TestScopesOfTwoPools(t *testing.T) {
	t.Parallel()
	p1, p2, ctx1, ctx, s1, s2 := twoPools(t)
	if dbctx.From(ctx) != s2 || p1.From(ctx) != s1 || p2.From(ctx) != s2 || p2.From(ctx1) != nil {
		t.Fatal("the pools do not find their own scopes")
	}
	if a, b := currentDB(ctx, t, p1.From(ctx)), currentDB(ctx, t, p2.From(ctx)); a == b {
		t.Fatalf("both scopes reach database %q", a)
	}
	if p1.Stats().Pinned != 1 || p2.Stats().Pinned != 1 {
		t.Fatalf("pinned: %d, %d; want 1, 1", p1.Stats().Pinned, p2.Stats().Pinned)
	}
	if err := dbctx.CloseOld(ctx); err != nil {
		t.Fatal(err)
	}
	if st1, st2 := p1.Stats(), p2.Stats(); st1.Pinned+st2.Pinned+st1.InUse+st2.InUse != 0 {
		t.Fatalf("CloseOld left something: %+v, %+v", st1, st2)
	}
}

// Do on one pool runs its own boundaries and leaves the other pool's scope
// as it is: the same session (PostgreSQL's backend pid) before and after,
// never given back in between.
func TestDoLeavesOtherPoolsScope(t *testing.T) {
	t.Parallel()
	p1, p2, _, ctx, s1, s2 := twoPools(t)
	if _, err := s2.ExecContext(ctx, "SET application_name = 'kept'"); err != nil {
		t.Fatal(err)
	}
	before, _ := backendPID(ctx, s2)
	for range 3 {
		err := p1.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			if s != s1 {
				t.Error("p1.Do did not run on p1's scope")
			}
			_, err := s.ExecContext(ctx, "SELECT 1")
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	after, _ := backendPID(ctx, s2)
	var app string
	s2.QueryRowContext(ctx, "SELECT current_setting('application_name')").Scan(&app)
	if before != after || app != "kept" {
		t.Fatalf("p2's session changed under p1.Do: pid %d -> %d, application_name %q", before, after, app)
	}
	if st := p2.Stats(); st.GivenBack != 0 || st.Resets != 0 {
		t.Fatalf("p1.Do gave p2's connection back: %+v", st)
	}
	if st := p1.Stats(); st.Pinned != 0 || st.InUse != 0 {
		t.Fatalf("p1.Do left its own scope pinned: %+v", st)
	}
}

// A panic in a Do discards the connections of both pools that the unit
// of work was using, and frees both slots.
func TestPanicDiscardsBothPools(t *testing.T) {
	t.Parallel()
	p1, p2, _, ctx, s1, s2 := twoPools(t)
	err := p1.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		currentDB(ctx, t, s)
		currentDB(ctx, t, p2.From(ctx))
		panic("boom")
	})
	var pe *dbctx.PanicError
	if !errors.As(err, &pe) {
		t.Fatalf("got %v, want a PanicError", err)
	}
	for i, p := range []*dbctx.Pool{p1, p2} {
		if st := p.Stats(); st.Discarded.Panic != 1 || st.Pinned != 0 || st.InUse != 0 {
			t.Errorf("pool %d after the panic: %+v", i+1, st)
		}
	}
	// Both scopes go on with fresh connections.
	if a, b := currentDB(ctx, t, s1), currentDB(ctx, t, s2); a == b {
		t.Fatal("same database")
	}
}

// Under Async every pool's scope refuses direct use; a Do on one pool runs
// on a fresh scope of it, and the other pool's still refuses there.
func TestAsyncCoversEveryPool(t *testing.T) {
	t.Parallel()
	p1, p2, _, ctx2, s1, _ := twoPools(t)
	ctx := dbctx.Async(ctx2)
	for i, p := range []*dbctx.Pool{p1, p2} {
		if _, err := p.From(ctx).ExecContext(ctx, "SELECT 1"); !errors.Is(err, dbctx.ErrAsyncContext) {
			t.Errorf("pool %d under Async: %v, want ErrAsyncContext", i+1, err)
		}
	}
	err := p1.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if s == s1 {
			t.Error("Do under Async ran on the socket's scope")
		}
		if _, err := p2.From(ctx).ExecContext(ctx, "SELECT 1"); !errors.Is(err, dbctx.ErrAsyncContext) {
			t.Errorf("p2 inside p1.Do under Async: %v, want ErrAsyncContext", err)
		}
		return p2.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			currentDB(ctx, t, s)
			currentDB(ctx, t, p1.From(ctx))
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range []*dbctx.Pool{p1, p2} {
		if st := p.Stats(); st.Pinned != 0 || st.InUse != 0 {
			t.Errorf("pool %d: %+v", i+1, st)
		}
	}
}

// OnCommit in a scope nested in another pool's Atomic waits for that
// Atomic, whether or not the nested scope has an Atomic of its own: it
// runs at the outer commit, and never where the outer Atomic rolls back
// (after the inner one committed).
func TestOnCommitWaitsForOuterPools(t *testing.T) {
	t.Parallel()
	p1, p2 := twoDatabases(t, newEnv(t))
	fail := errors.New("roll back")
	for _, innerAtomic := range []bool{false, true} {
		for _, outerErr := range []error{nil, fail} {
			var ran, early bool
			err := p1.Do(context.Background(), func(ctx context.Context, s1 *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := s1.ExecContext(ctx, "SELECT 1"); err != nil {
						return err
					}
					err := p2.Do(ctx, func(ctx context.Context, s2 *dbctx.Scope) error {
						register := func(ctx context.Context) error {
							_, err := s2.ExecContext(ctx, "SELECT 1")
							dbctx.OnCommit(ctx, func() { ran = true })
							return err
						}
						if innerAtomic {
							return dbctx.Atomic(ctx, register)
						}
						return register(ctx)
					})
					early = ran
					if err != nil {
						return err
					}
					return outerErr
				})
			})
			if !errors.Is(err, outerErr) {
				t.Fatalf("inner Atomic %v: %v", innerAtomic, err)
			}
			if early || ran != (outerErr == nil) {
				t.Errorf("inner Atomic %v, outer rolled back %v: ran before the outer commit %v, ran at all %v",
					innerAtomic, outerErr != nil, early, ran)
			}
		}
	}
}

// The same through an Async context made inside the Atomic: OnCommit with
// it, and a Do of another pool from it, wait for the Atomic around.
func TestOnCommitThroughAsync(t *testing.T) {
	t.Parallel()
	p1, p2 := twoDatabases(t, newEnv(t))
	fail := errors.New("roll back")
	for _, outerErr := range []error{nil, fail} {
		var direct, viaDo, early bool
		err := p1.Do(context.Background(), func(ctx context.Context, s1 *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s1.ExecContext(ctx, "SELECT 1"); err != nil {
					return err
				}
				actx := dbctx.Async(ctx)
				dbctx.OnCommit(actx, func() { direct = true })
				err := p2.Do(actx, func(ctx context.Context, s2 *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						_, err := s2.ExecContext(ctx, "SELECT 1")
						dbctx.OnCommit(ctx, func() { viaDo = true })
						return err
					})
				})
				early = direct || viaDo
				if err != nil {
					return err
				}
				return outerErr
			})
		})
		if !errors.Is(err, outerErr) {
			t.Fatal(err)
		}
		if early || direct != (outerErr == nil) || viaDo != (outerErr == nil) {
			t.Errorf("outer rolled back %v: ran before the outer commit %v; ran: directly %v, in the other pool's Do %v",
				outerErr != nil, early, direct, viaDo)
		}
	}
}

// A function registered, from another goroutine, through the context of
// an Atomic whose COMMIT is running and then fails (a deferred trigger
// that raises) never runs: the registration waits for the scope, and then
// goes with the Atomic's outcome, not as if no Atomic were open. So does
// one in a Do of another pool made from that context.
func TestOnCommitDuringFailingCommit(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	mustExec(t, env.Admin(), `CREATE TABLE `+env.Schema()+`.late (n int);
		CREATE FUNCTION `+env.Schema()+`.late_fail() RETURNS trigger LANGUAGE plpgsql AS
			$$BEGIN PERFORM pg_sleep(0.5); RAISE EXCEPTION 'no'; END$$;
		CREATE CONSTRAINT TRIGGER late_t AFTER INSERT ON `+env.Schema()+`.late
			DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION `+env.Schema()+`.late_fail()`)
	p1, p2 := twoDatabases(t, env)
	var direct, viaDo atomic.Bool
	registered := make(chan struct{})
	err := p1.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		pid, err := backendPID(ctx, s)
		if err != nil {
			return err
		}
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO late VALUES (1)"); err != nil {
				return err
			}
			actx := dbctx.Async(ctx)
			go func() {
				defer close(registered)
				// Once the COMMIT runs on the server.
				for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
					var q string
					if env.Admin().QueryRow("SELECT query FROM pg_stat_activity WHERE pid = $1 AND state = 'active'", pid).Scan(&q) == nil && q == "COMMIT" {
						break
					}
				}
				dbctx.OnCommit(actx, func() { direct.Store(true) })
				p2.Do(actx, func(ctx context.Context, _ *dbctx.Scope) error {
					dbctx.OnCommit(ctx, func() { viaDo.Store(true) })
					return nil
				})
			}()
			return nil
		})
	})
	<-registered
	if err == nil {
		t.Fatal("the COMMIT succeeded: the trigger did not raise")
	}
	if direct.Load() || viaDo.Load() {
		t.Errorf("registered during a COMMIT that failed, ran: directly %v, in another pool's Do %v", direct.Load(), viaDo.Load())
	}
}
