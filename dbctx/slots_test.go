package dbctx_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
)

// With 10× more callers than slots, every caller either succeeds or is
// refused with ErrBusy within the wait timeout; none hangs.
func TestOverload(t *testing.T) {
	t.Parallel()
	const slots, callers = 2, 20
	const timeout = 300 * time.Millisecond
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: slots, MaxWaiting: 6, WaitTimeout: timeout})
	var (
		wg            sync.WaitGroup
		mu            sync.Mutex
		ok, busy      int
		slowestRefuse time.Duration
	)
	for range callers {
		wg.Go(func() {
			start := time.Now()
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT pg_sleep(0.1)")
				return err
			})
			took := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, dbctx.ErrBusy):
				busy++
				slowestRefuse = max(slowestRefuse, took)
			default:
				t.Errorf("unexpected error: %v", err)
			}
		})
	}
	wg.Wait()
	if ok+busy != callers || ok == 0 || busy == 0 {
		t.Fatalf("ok %d, busy %d of %d callers", ok, busy, callers)
	}
	// Generous slack: this bounds a hang, it does not time the pool.
	if slowestRefuse > timeout+5*time.Second {
		t.Fatalf("a refusal took %v, wait timeout is %v", slowestRefuse, timeout)
	}
	st := p.Stats()
	if st.Busy != int64(busy) {
		t.Errorf("Stats.Busy = %d, callers refused %d", st.Busy, busy)
	}
	t.Logf("ok %d, busy %d, waits %d, slowest refusal %v", ok, busy, st.WaitCount, slowestRefuse)
}

// A caller whose context ends while queued leaves the queue with ctx's
// error.
func TestQueuedCancel(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: time.Minute})
	hold := make(chan struct{})
	held := make(chan struct{})
	go p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		close(held)
		<-hold
		return nil
	})
	<-held
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error)
	go func() {
		errc <- p.Do(ctx, func(context.Context, *dbctx.Scope) error { return nil })
	}()
	eventually(t, "the caller to queue", func() bool { return p.Stats().Waiting == 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	close(hold)
	eventually(t, "the slot to free", func() bool { return p.Stats().InUse == 0 })
}

func TestNewSetsMaxOpenConns(t *testing.T) {
	env := newEnv(t)
	t.Setenv(dbctx.EnvMaxWorkers, "3")
	db := env.Open(t)
	p := dbctx.New(db, nil)
	if got := p.Stats().MaxWorkers; got != 3 {
		t.Fatalf("MaxWorkers = %d, want 3 from %s", got, dbctx.EnvMaxWorkers)
	}
	if got := db.Stats().MaxOpenConnections; got != 3 {
		t.Fatalf("MaxOpenConns = %d, want 3", got)
	}
}

func TestInvalidOptionsPanic(t *testing.T) {
	t.Parallel()
	defer func() {
		if r := recover(); r == nil {
			t.Fatal("no panic")
		}
	}()
	dbctx.New(newEnv(t).Open(t), &dbctx.Options{MaxWorkers: -1})
}

// ErrBusy reaches QueryRowContext callers through the row.
func TestBusyRow(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
	ctx, s := p.Scope(context.Background())
	defer s.End()
	if _, err := backendPID(ctx, s); err != nil {
		t.Fatal(err)
	}
	ctx2, s2 := p.Scope(context.Background())
	defer s2.End()
	if _, err := backendPID(ctx2, s2); !errors.Is(err, dbctx.ErrBusy) {
		t.Fatalf("got %v, want ErrBusy", err)
	}
}
