package dbctx_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

func TestDoPanic(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.BeginTx(ctx, nil); err != nil {
			return err
		}
		if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			return err
		}
		panic("boom")
	})
	var pe *dbctx.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" || !strings.Contains(string(pe.Stack), "TestDoPanic") {
		t.Fatalf("got %v, want a PanicError carrying the stack", err)
	}
	st := p.Stats()
	if st.Discarded.Panic != 1 {
		t.Errorf("panic discards = %d, want 1", st.Discarded.Panic)
	}
	n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
		return queryInt(ctx, s, "SELECT count(*) FROM t")
	})
	if err != nil || n != 0 {
		t.Fatalf("after panic: %d rows, %v; want 0 rows", n, err)
	}
}

// scopeCtx returns a context carrying a scope of p that ends with the test.
func scopeCtx(t *testing.T, p *dbctx.Pool) context.Context {
	ctx, s := p.Scope(context.Background())
	t.Cleanup(s.End)
	return ctx
}

// Nested Do reuses the scope's slot and connection: with one slot it must
// not deadlock, and both levels see the same backend.
func TestNestedDoOneSlot(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		outer, err := backendPID(ctx, s)
		if err != nil {
			return err
		}
		return dbctx.Do(ctx, func(ctx context.Context, inner *dbctx.Scope) error {
			if inner != s {
				t.Error("nested Do got another scope")
			}
			pid, err := backendPID(ctx, inner)
			if err == nil && pid != outer {
				t.Errorf("nested Do on backend %d, outer on %d", pid, outer)
			}
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDoWithoutScope(t *testing.T) {
	t.Parallel()
	err := dbctx.Do(context.Background(), func(context.Context, *dbctx.Scope) error { return nil })
	if !errors.Is(err, dbctx.ErrNoScope) {
		t.Fatalf("got %v, want ErrNoScope", err)
	}
	var s *dbctx.Scope
	if _, err := s.ExecContext(context.Background(), "SELECT 1"); !errors.Is(err, dbctx.ErrNoScope) {
		t.Fatalf("nil scope: got %v, want ErrNoScope", err)
	}
	if err := s.QueryRowContext(context.Background(), "SELECT 1").Scan(new(int)); !errors.Is(err, dbctx.ErrNoScope) {
		t.Fatalf("nil scope row: got %v, want ErrNoScope", err)
	}
}

// An async context refuses direct use; Do runs on a scope of its own.
func TestAsyncGuard(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	ctx := dbctx.Async(scopeCtx(t, p))
	if !dbctx.IsAsync(ctx) {
		t.Fatal("IsAsync = false after Async")
	}
	if _, err := queryInt(ctx, dbctx.From(ctx), "SELECT 1"); !errors.Is(err, dbctx.ErrAsyncContext) {
		t.Fatalf("direct use: got %v, want ErrAsyncContext", err)
	}
	if err := dbctx.Atomic(ctx, func(context.Context) error { return nil }); !errors.Is(err, dbctx.ErrAsyncContext) {
		t.Fatalf("Atomic: got %v, want ErrAsyncContext", err)
	}
	n, err := dbctx.DoValue(ctx, func(ctx context.Context, s *dbctx.Scope) (int, error) {
		if dbctx.IsAsync(ctx) {
			t.Error("IsAsync inside Do")
		}
		return queryInt(ctx, dbctx.From(ctx), "SELECT 7")
	})
	if err != nil || n != 7 {
		t.Fatalf("Do from async context: %d, %v", n, err)
	}

	// Async contexts share their pool's one async scope, which holds
	// nothing: ending it, from several goroutines at once, changes nothing
	// for any of them.
	asyncs := []context.Context{ctx, dbctx.Async(scopeCtx(t, p))}
	var wg sync.WaitGroup
	for _, ctx := range asyncs {
		wg.Go(func() {
			dbctx.From(ctx).End()
			dbctx.From(ctx).Abort()
		})
	}
	wg.Wait()
	for i, ctx := range asyncs {
		s := dbctx.From(ctx)
		if err := s.Reserve(ctx); !errors.Is(err, dbctx.ErrAsyncContext) {
			t.Errorf("%d: Reserve after End: %v, want ErrAsyncContext", i, err)
		}
		if _, err := s.BeginTx(ctx, nil); !errors.Is(err, dbctx.ErrAsyncContext) {
			t.Errorf("%d: BeginTx after End: %v, want ErrAsyncContext", i, err)
		}
		if _, err := s.Conn(ctx); !errors.Is(err, dbctx.ErrAsyncContext) {
			t.Errorf("%d: Conn after End: %v, want ErrAsyncContext", i, err)
		}
		if err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			return err
		}); err != nil {
			t.Errorf("%d: Do after End: %v", i, err)
		}
	}
}

// A scope that never touches the database takes no slot and no connection.
func TestLazyScope(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	ctx, s := p.Scope(context.Background())
	if dbctx.From(ctx) != s {
		t.Fatal("From does not find the scope")
	}
	if err := dbctx.CloseOld(ctx); err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Acquired != 0 {
		t.Fatalf("unused scope took resources: %+v", st)
	}
	s.End()
	if _, err := queryInt(ctx, s, "SELECT 1"); !errors.Is(err, dbctx.ErrScopeEnded) {
		t.Fatalf("after End: got %v, want ErrScopeEnded", err)
	}
}

// Do with a context done already runs nothing and returns its error, on a
// fresh scope, on a scope the context carries, and nested; a free slot
// does not make it run.
func TestDoContextDone(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 2})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	fn := func(context.Context, *dbctx.Scope) error { ran = true; return nil }
	if err := p.Do(ctx, fn); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("fresh scope: got %v, ran %v; want context.Canceled, not run", err, ran)
	}
	sctx, s := p.Scope(context.Background())
	defer s.End()
	sctx, cancel = context.WithCancel(sctx)
	cancel()
	if err := dbctx.Do(sctx, fn); !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("request scope: got %v, ran %v; want context.Canceled, not run", err, ran)
	}
	var inner error
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		inner = dbctx.Do(ctx, fn)
		return nil
	})
	if err != nil || !errors.Is(inner, context.Canceled) || ran {
		t.Fatalf("nested: got %v / %v, ran %v; want context.Canceled, not run", err, inner, ran)
	}
	if st := p.Stats(); st.InUse != 0 {
		t.Errorf("slots in use after: %d", st.InUse)
	}
}
