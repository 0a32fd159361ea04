package natslayer_test

import (
	"context"
	"log/slog"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// panicHandler is a slog.Handler that panics on every record.
type panicHandler struct{ slog.Handler }

func (panicHandler) Enabled(context.Context, slog.Level) bool  { return true }
func (panicHandler) Handle(context.Context, slog.Record) error { panic("the log handler's bug") }

// A Logger whose handler panics loses its records and ends nothing: the
// engine logs its disconnection and reconnection from nats.go's
// callbacks, where a panic would end the process.
func TestLoggerPanics(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	e, err := natslayer.Connect(srv.URL, &natslayer.Options{Logger: slog.New(panicHandler{slog.DiscardHandler})})
	if err != nil {
		t.Fatal(err)
	}
	l, err := groups.New(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	srv.Kill(t)
	dbtest.Eventually(t, "the engine down", func() bool { return e.Ready() != nil })
	srv.Restart(t)
	dbtest.Eventually(t, "the engine back", func() bool { return e.Stats().Reconnects > 0 && e.Ready() == nil })
}
