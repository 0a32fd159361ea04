package dbctx_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
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
