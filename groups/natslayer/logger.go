package natslayer

import (
	"context"
	"fmt"
	"log/slog"
)

// safeLogger returns l with its handler's panics recovered: the engine
// logs from nats.go's callbacks and its own goroutines, where a panic of
// the user's handler would end the process. A record whose handler
// panics is lost, as one whose handler fails is.
func safeLogger(l *slog.Logger) *slog.Logger {
	return slog.New(safeHandler{l.Handler()})
}

// safeHandler is next, its panics recovered.
type safeHandler struct{ next slog.Handler }

func (h safeHandler) Enabled(ctx context.Context, level slog.Level) (on bool) {
	defer func() {
		if recover() != nil {
			on = false
		}
	}()
	return h.next.Enabled(ctx, level)
}

func (h safeHandler) Handle(ctx context.Context, r slog.Record) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("natslayer: the Logger's handler panicked: %v", v)
		}
	}()
	return h.next.Handle(ctx, r)
}

func (h safeHandler) WithAttrs(as []slog.Attr) (out slog.Handler) {
	defer func() {
		if recover() != nil {
			out = h
		}
	}()
	return safeHandler{h.next.WithAttrs(as)}
}

func (h safeHandler) WithGroup(name string) (out slog.Handler) {
	defer func() {
		if recover() != nil {
			out = h
		}
	}()
	return safeHandler{h.next.WithGroup(name)}
}
