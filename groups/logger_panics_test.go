package groups_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// panicHandler is a slog.Handler that panics on every record.
type panicHandler struct{ slog.Handler }

func (panicHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (panicHandler) Handle(context.Context, slog.Record) error { panic("the log handler's bug") }

// A Logger whose handler panics loses its records and ends nothing: not
// a member whose callback panicked (logged from the member's goroutine),
// not the PostgreSQL engine's listener (which logs from its own as its
// connection breaks), not the process.
func TestLoggerPanics(t *testing.T) {
	t.Parallel()
	logger := slog.New(panicHandler{slog.DiscardHandler})
	ctx := context.Background()

	t.Run("member", func(t *testing.T) {
		t.Parallel()
		l, err := groups.New(groups.NewMemory(), &groups.Options{Logger: logger})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		r := &recorder{}
		m := l.NewMember(func(e groups.Event) {
			if string(e.Data) == "boom" {
				panic("the callback's bug")
			}
			r.handle(e)
		}, nil)
		defer m.Close()
		if err := m.Join(ctx, "g"); err != nil {
			t.Fatal(err)
		}
		for _, d := range []string{"boom", "after"} {
			if err := l.Send(ctx, "g", []byte(d)); err != nil {
				t.Fatal(err)
			}
		}
		dbtest.Eventually(t, "the event after the panic", func() bool { return r.n.Load() == 1 })
	})

	t.Run("listener", func(t *testing.T) {
		t.Parallel()
		pgtest.SkipPooled(t, "the listener goes through a proxy of the test's, to the server: LISTEN needs a direct connection")
		env := pgtest.New(t)
		px := pgtest.NewProxy(t, env)
		in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: px.DSN(), SampleEvery: time.Hour, Logger: logger})[0]
		px.Cut()
		dbtest.Eventually(t, "the listener down", func() bool { return in.layer.Ready() != nil })
		px.Restore()
		dbtest.Eventually(t, "the listener back", func() bool { return in.layer.Ready() == nil })
	})
}
