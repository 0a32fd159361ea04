package dbctx_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
)

func TestHookErrors(t *testing.T) {
	t.Parallel()
	errHook := errors.New("hook failed")
	t.Run("OnAcquire", func(t *testing.T) {
		t.Parallel()
		p, _ := newPool(t, &dbctx.Options{OnAcquire: func(context.Context, *sql.Conn) error { return errHook }})
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := backendPID(ctx, s)
			return err
		})
		if !errors.Is(err, errHook) {
			t.Fatalf("got %v, want the hook's error", err)
		}
		if st := p.Stats(); st.Discarded.Hook != 1 {
			t.Fatalf("hook discards = %d, want 1", st.Discarded.Hook)
		}
	})
	// OnRelease runs in the cleanup after the work, which its error does
	// not undo: Do returns the work's outcome, and the connection is
	// discarded, counted and logged.
	t.Run("OnRelease", func(t *testing.T) {
		t.Parallel()
		var log syncBuffer
		p, _ := newPool(t, &dbctx.Options{
			OnRelease: func(context.Context, *sql.Conn) error { return errHook },
			Logger:    slog.New(slog.NewTextHandler(&log, nil)),
		})
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := backendPID(ctx, s)
			return err
		})
		if err != nil {
			t.Fatalf("got %v, want the work's outcome (nil)", err)
		}
		if st := p.Stats(); st.Discarded.Hook != 1 || st.GivenBack != 0 {
			t.Fatalf("want the connection discarded: %+v", st)
		}
		if !strings.Contains(log.String(), errHook.Error()) {
			t.Fatalf("the hook's error was not logged: %q", log.String())
		}
	})
}

// syncBuffer is a log destination safe for the leak detector's goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func TestLeakDetector(t *testing.T) {
	t.Parallel()
	var log syncBuffer
	p, _ := newPool(t, &dbctx.Options{
		ConnMaxAge:  -1,
		LeakTimeout: 20 * time.Millisecond,
		Logger:      slog.New(slog.NewTextHandler(&log, nil)),
	})
	ctx, s := p.Scope(context.Background())
	if _, err := backendPID(ctx, s); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the leak report", func() bool { return p.Stats().Leaks == 1 })
	s.End()
	out := log.String()
	if !strings.Contains(out, "pinned longer than LeakTimeout") || !strings.Contains(out, "TestLeakDetector") {
		t.Fatalf("leak report lacks the message or the pinning stack:\n%s", out)
	}
}

// A hook that panics fails what it was for, as its error would, or (an
// observer's) is logged: it does not crash the process (OnBegin's, from
// under the scope's lock, did), nor leak the connection or slot at hand
// (OnAcquire's and OnPin's left the *sql.DB's connection checked out for
// good, OnRelease's and OnWait's the slot). After it, the pool holds
// nothing and serves the next unit of work.
func TestHookPanics(t *testing.T) {
	t.Parallel()
	for _, hook := range []string{"OnAcquire", "OnBegin", "OnRelease", "OnPin", "OnWait", "OnDo", "OnDo's done"} {
		t.Run(hook, func(t *testing.T) {
			t.Parallel()
			var armed sync.Mutex // held while the hook is to panic
			armed.Lock()
			boom := func() {
				if armed.TryLock() {
					armed.Unlock()
					return
				}
				panic(hook + " boom")
			}
			logs, logger := dbtest.NewLogs()
			opts := &dbctx.Options{MaxWorkers: 1, Logger: logger}
			switch hook {
			case "OnAcquire":
				opts.OnAcquire = func(context.Context, *sql.Conn) error { boom(); return nil }
			case "OnBegin":
				opts.OnBegin = func(context.Context, *dbctx.Scope) error { boom(); return nil }
			case "OnRelease":
				opts.OnRelease = func(context.Context, *sql.Conn) error { boom(); return nil }
			case "OnPin":
				opts.OnPin = func(context.Context, dbctx.Pin) { boom() }
			case "OnDo":
				opts.OnDo = func(ctx context.Context) (context.Context, func(error)) { boom(); return ctx, nil }
			case "OnDo's done":
				opts.OnDo = func(ctx context.Context) (context.Context, func(error)) { return ctx, func(error) { boom() } }
			case "OnWait":
				opts.OnWait = func(_ context.Context, w dbctx.Wait) {
					if w.Err == nil {
						boom()
					}
				}
			}
			p, _ := newPool(t, opts)
			if hook == "OnWait" {
				// A wait to tell of: the one slot held until the unit
				// below queues for it.
				held, release := make(chan struct{}), make(chan struct{})
				go p.Do(context.Background(), func(context.Context, *dbctx.Scope) error {
					close(held)
					<-release
					return nil
				})
				<-held
				go func() {
					// In the queue itself: Waiting counts a caller a moment
					// before, when a slot given back then is still its to
					// take without a wait to tell of.
					dbtest.Wait(time.Minute, func() bool { return p.Queued() == 1 })
					close(release)
				}()
			}
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := backendPID(ctx, s)
					return err
				})
			})
			var pe *dbctx.PanicError
			switch hook {
			case "OnAcquire", "OnBegin":
				if !errors.As(err, &pe) || pe.Hook != hook || !strings.Contains(err.Error(), hook) {
					t.Errorf("got %v, want the hook's panic as its error", err)
				}
			case "OnRelease":
				// Its failure is the cleanup's, after the work: logged.
				if err != nil || logs.Count(slog.LevelWarn, "dbctx: cleaning up after Do") != 1 {
					t.Errorf("got %v, logs %s; want nil, the cleanup's failure logged", err, logs)
				}
			default:
				if err != nil || logs.Count(slog.LevelError, "dbctx: Options."+strings.TrimSuffix(hook, "'s done")+" panicked") != 1 {
					t.Errorf("got %v, logs %s; want nil, the panic logged", err, logs)
				}
			}
			armed.Unlock()
			if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
				t.Errorf("after the panic: %+v, want nothing held", st)
			}
			dbtest.Eventually(t, "the *sql.DB's connections back", func() bool { return p.DB().Stats().InUse == 0 })
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := backendPID(ctx, s)
				return err
			}); err != nil {
				t.Errorf("the next unit of work: %v", err)
			}
		})
	}
}

// A Logger whose handler panics, called where the pool logs under a
// scope's lock (an Atomic ending with rows open) or from a timer: the
// pool goes on (Do hung, its lock left held by the panic).
func TestLoggerPanics(t *testing.T) {
	t.Parallel()
	logger := slog.New(panicHandler{})
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, Logger: logger})
	noHang(t, "Do with a Logger that panics", func() {
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.QueryContext(ctx, "SELECT generate_series(1, 10)") // left open
				return err
			})
		})
		if err == nil {
			t.Error("Atomic with rows left open: nil, want an error")
		}
	})
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := backendPID(ctx, s)
		return err
	}); err != nil {
		t.Errorf("the next unit of work: %v", err)
	}
}

type panicHandler struct{}

func (panicHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (panicHandler) Handle(context.Context, slog.Record) error { panic("handler boom") }
func (h panicHandler) WithAttrs([]slog.Attr) slog.Handler      { return h }
func (h panicHandler) WithGroup(string) slog.Handler           { return h }

// acquireStatement is OnAcquire's statement in TestOnAcquireContextEnds:
// the name marks its goroutine.
func acquireStatement(ctx context.Context, conn *sql.Conn) error {
	_, err := conn.ExecContext(ctx, "SELECT 1")
	return err
}

// A unit of work whose context ends while OnAcquire's statement waits for
// the connection (past database/sql's look at the context, before pgx's)
// gets its context's error, as a statement of its own would, and the
// connection is counted discarded for it. It got "driver: bad
// connection": pgx's stdlib reports a statement that finds its context
// done as a connection safe to try again, and database/sql closes it (so
// a second statement of the hook found it "already closed"); a scope
// sharing goroutines with deadlines of their own saw this now and then.
// The hook's statement is held behind conn.Raw on another goroutine while
// the context ends.
func TestOnAcquireContextEnds(t *testing.T) {
	t.Parallel()
	var armed atomic.Bool
	var cancel context.CancelFunc
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, OnAcquire: func(ctx context.Context, conn *sql.Conn) error {
		if !armed.Load() {
			return nil
		}
		held, release := make(chan struct{}), make(chan struct{})
		rawDone := make(chan struct{})
		go func() {
			defer close(rawDone)
			conn.Raw(func(any) error { close(held); <-release; return nil })
		}()
		<-held
		errc := make(chan error, 1)
		go func() { errc <- acquireStatement(ctx, conn) }()
		eventually(t, "OnAcquire's statement waiting for the connection", func() bool {
			return parkedIn("dbctx_test.acquireStatement", "sync.(*Mutex).Lock")
		})
		cancel()
		close(release)
		<-rawDone
		return <-errc
	}})
	noHang(t, "a unit whose context ends in OnAcquire", func() {
		for range 3 {
			var ctx context.Context
			ctx, cancel = context.WithCancel(context.Background())
			armed.Store(true)
			before := p.Stats().Discarded
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := queryInt(ctx, s, "SELECT 1")
				return err
			})
			armed.Store(false)
			if !errors.Is(err, context.Canceled) {
				t.Errorf("the unit whose context ended in OnAcquire: %v, want context.Canceled", err)
			}
			if d := p.Stats().Discarded; d.Canceled != before.Canceled+1 {
				t.Errorf("discarded: %+v, then %+v: want one more for a context ended", before, d)
			}
			// The next unit gets a connection that works.
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := queryInt(ctx, s, "SELECT 1")
				return err
			}); err != nil {
				t.Errorf("the next unit: %v", err)
			}
		}
	})
}
