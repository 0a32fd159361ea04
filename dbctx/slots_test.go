package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/patient"
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
	release := holdSlot(p)
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
	release()
	eventually(t, "the slot to free", func() bool { return p.Stats().InUse == 0 })
}

func TestNewSetsMaxOpenConns(t *testing.T) {
	env := newEnv(t)
	t.Setenv("DBCTX_MAX_WORKERS", "3")
	db := env.Open(t)
	p := dbctx.New(db, nil)
	if got := p.Stats().MaxWorkers; got != 3 {
		t.Fatalf("MaxWorkers = %d, want 3 from DBCTX_MAX_WORKERS", got)
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

// Slots go to queued callers in the order they queued, not to a newcomer.
func TestQueueOrder(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: time.Minute})
	release := holdSlot(p)
	ctx := context.Background()
	ran := queueInOrder(t, p, []context.Context{ctx, ctx, ctx}, func(int) func(context.Context, *dbctx.Scope) error {
		return func(context.Context, *dbctx.Scope) error { return nil }
	})
	release()
	if got := ran(); fmt.Sprint(got) != "[0 1 2]" {
		t.Fatalf("slots went to the queued callers in order %v, want [0 1 2]", got)
	}
}

// queueInOrder queues one caller of p.Do per context of ctxs, in their
// order, each once the one before it waits for a slot, running fn(i);
// after the slots are given back, ran waits for them all and returns the
// order in which their units began.
func queueInOrder(t *testing.T, p *dbctx.Pool, ctxs []context.Context, fn func(i int) func(context.Context, *dbctx.Scope) error) (ran func() []int) {
	t.Helper()
	order := make(chan int, len(ctxs))
	var wg sync.WaitGroup
	for i, ctx := range ctxs {
		wg.Go(func() {
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				order <- i
				return fn(i)(ctx, s)
			})
			if err != nil {
				t.Error(err)
			}
		})
		// Its place in the queue, not the Waiting count, which a caller
		// joins before it takes its place: the next caller could take
		// the place before it.
		eventually(t, "the caller to queue", func() bool { return p.Queued() == i+1 })
	}
	return func() []int {
		wg.Wait()
		close(order)
		var got []int
		for i := range order {
			got = append(got, i)
		}
		return got
	}
}

// Many callers taking and giving back few slots as fast as they can: never
// more holders than slots, and no caller waits out the timeout (a slot
// given back just as a caller starts to wait is not missed).
func TestSlotsUnderContention(t *testing.T) {
	t.Parallel()
	const slots, callers, calls = 2, 16, 400
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: slots, MaxWaiting: callers, WaitTimeout: 30 * time.Second})
	var holders, most atomic.Int64
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			for range calls {
				err := p.Do(context.Background(), func(context.Context, *dbctx.Scope) error {
					n := holders.Add(1)
					for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
					}
					runtime.Gosched()
					holders.Add(-1)
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if m := most.Load(); m > slots {
		t.Fatalf("%d callers held a slot at once, %d slots", m, slots)
	}
	if st := p.Stats(); st.InUse != 0 || st.Waiting != 0 || st.Busy != 0 {
		t.Fatalf("after: %+v", st)
	}
}

// A caller queued when the pool closes gets ErrPoolClosed at once.
func TestQueuedPoolClosed(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: time.Minute})
	release := holdSlot(p)
	errc := make(chan error)
	go func() {
		errc <- p.Do(context.Background(), func(context.Context, *dbctx.Scope) error { return nil })
	}()
	eventually(t, "the caller to queue", func() bool { return p.Stats().Waiting == 1 })
	p.Close()
	if err := <-errc; !errors.Is(err, dbctx.ErrPoolClosed) {
		t.Fatalf("got %v, want ErrPoolClosed", err)
	}
	release()
	eventually(t, "the slot to free", func() bool { return p.Stats().InUse == 0 && p.Stats().Waiting == 0 })
}

// holdSlot takes one of p's slots until release is called.
func holdSlot(p *dbctx.Pool) (release func()) {
	hold := make(chan struct{})
	held := make(chan struct{})
	go p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		close(held)
		<-hold
		return nil
	})
	<-held
	return func() { close(hold) }
}

// Callers queued one after the other each wait out their own timeout, no
// less (the queue's one timer, set for its head, does not end the later
// waits with the first), and each does get ErrBusy then.
func TestQueuedTimeouts(t *testing.T) {
	t.Parallel()
	const timeout = 300 * time.Millisecond
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: timeout})
	release := holdSlot(p)
	type result struct {
		err  error
		took time.Duration
	}
	results := make(chan result, 3)
	for i := range 3 {
		go func() {
			start := time.Now()
			err := p.Do(context.Background(), func(context.Context, *dbctx.Scope) error { return nil })
			results <- result{err, time.Since(start)}
		}()
		// Queued so far: those waiting and those done waiting (an earlier
		// one may time out first on a slow machine).
		eventually(t, "the caller to queue", func() bool { st := p.Stats(); return int64(st.Waiting)+st.WaitCount == int64(i+1) })
		time.Sleep(timeout / 3) // spread the deadlines; nothing below depends on how far
	}
	for range 3 {
		select {
		case r := <-results:
			if !errors.Is(r.err, dbctx.ErrBusy) || r.took < timeout {
				t.Errorf("a queued caller got %v after %v, want ErrBusy after at least %v", r.err, r.took, timeout)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a queued caller never timed out")
		}
	}
	if st := p.Stats(); st.Waiting != 0 || st.Busy != 3 || st.WaitCount != 3 {
		t.Fatalf("after: %+v", st)
	}
	release()
	eventually(t, "the slot to free", func() bool { return p.Stats().InUse == 0 })
}

// Patient callers wait beyond MaxWaiting and do not count against it:
// with one slot held and five patient callers queued, one impatient
// caller still queues and the next is refused; once the slot is free,
// every queued caller runs.
func TestPatient(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: 1, WaitTimeout: time.Minute})
	release := holdSlot(p)
	errs := make(chan error, 6)
	run := func(ctx context.Context) {
		errs <- p.Do(ctx, func(context.Context, *dbctx.Scope) error { return nil })
	}
	for i := range 5 {
		go run(patient.With(context.Background()))
		eventually(t, "the patient caller to queue", func() bool { return p.Stats().Waiting == i+1 })
	}
	go run(context.Background())
	eventually(t, "the impatient caller to queue", func() bool { return p.Stats().Waiting == 6 })
	if err := p.Do(context.Background(), func(context.Context, *dbctx.Scope) error { return nil }); !errors.Is(err, dbctx.ErrBusy) {
		t.Fatalf("a second impatient caller: %v, want ErrBusy", err)
	}
	release()
	for range 6 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// Once the pace at which slots go to queued callers is known, a caller
// whose turn would come after the wait timeout at that pace is refused
// at once, without queueing (Stats.WaitCount does not count it), however
// large MaxWaiting; a caller whose turn comes in time queues. Here the one
// slot goes on every 400ms of work, and the wait timeout is 2s, of which
// the pool counts on three quarters, 1.5s: the third caller in the queue
// waits at most 1.2s, the fourth would 1.6s.
func TestRefusedAtOnceAtThePace(t *testing.T) {
	t.Parallel()
	const hold, timeout = 400 * time.Millisecond, 2 * time.Second
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: 1000, WaitTimeout: timeout})
	ctx := context.Background()
	work := func(ctx context.Context, s *dbctx.Scope) error {
		time.Sleep(hold) // the work: it holds the slot
		return nil
	}
	hold0, first := p.Scope(ctx)
	if err := first.Reserve(hold0); err != nil {
		t.Fatal(err)
	}
	// Two callers queue behind the held slot; the slot goes to the
	// first when it is let go, to the second 400ms later: the pace.
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if err := p.Do(ctx, work); err != nil {
				t.Error(err)
			}
		})
	}
	eventually(t, "two callers queued", func() bool { return p.Stats().Waiting == 2 })
	first.End()
	eventually(t, "the pace measured", func() bool { return p.Pace() > 0 })
	if pace := p.Pace(); pace < hold/2 {
		t.Fatalf("pace %v for work of %v", pace, hold)
	}
	// The second caller holds the slot now, or will within a moment; a
	// queue of callers forms behind it.
	eventually(t, "the second caller served", func() bool { return p.Stats().Waiting == 0 && p.Stats().InUse == 1 })
	results := make(chan error, 6)
	queued := p.Stats().WaitCount
	for i := range 6 {
		wg.Go(func() { results <- p.Do(ctx, work) })
		// One at a time, so that each finds the ones before it queued.
		eventually(t, "the caller queued or refused", func() bool {
			st := p.Stats()
			return st.Waiting+int(st.Busy) == i+1 || st.InUse == 0
		})
	}
	wg.Wait()
	close(results)
	var ok, busy int
	for err := range results {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, dbctx.ErrBusy):
			busy++
		default:
			t.Error(err)
		}
	}
	st := p.Stats()
	if ok != 3 || busy != 3 || st.WaitCount-queued != 3 {
		t.Errorf("%d served, %d refused; %d queued: want 3 served, 3 refused without queueing", ok, busy, st.WaitCount-queued)
	}
}

// With the default wait bounds, a burst the slots clear well within the
// wait timeout is queued, not refused: 20× the slots at once, each
// holding its slot for a 2ms statement (issue 23: the former default
// queue of 8× the slots refused half of such a burst).
func TestBurstQueuedByDefault(t *testing.T) {
	t.Parallel()
	const slots = 2
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: slots})
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, 20*slots)
	for range 20 * slots {
		wg.Go(func() {
			<-start
			errs <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT pg_sleep(0.002)")
				return err
			})
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if st := p.Stats(); st.Busy != 0 {
		t.Errorf("%d of a burst of %d refused", st.Busy, 20*slots)
	}
}
