// Package logattrs logs records about a request or a websocket with the
// attributes that the caller's function finds in its context (a request
// id, a user, a tenant): the LogAttrs option of packages middleware and
// wsconsumer.
package logattrs

import (
	"context"
	"fmt"
	"log/slog"
)

// Func returns the attributes of the unit of work ctx belongs to.
type Func = func(ctx context.Context) []slog.Attr

// Log logs msg at level with attrs, then f's attributes for ctx (f may be
// nil). The record is logged with ctx too, for handlers that read it.
// f is called only when l logs at level.
//
// A panic of f's (a nil user in a context no middleware authenticated)
// or of l's handler does not go on: packages middleware and wsconsumer
// log from goroutines of their own (a socket's worker, a group member's,
// the keepalive goroutine, under a lock) and after a commit, where it
// would end the process, or leave a lock held or a response unsent. The
// record is logged without f's attributes, with log_attrs_panic saying
// what f panicked with; a handler's panic loses the record, as a
// handler's error does.
func Log(ctx context.Context, l *slog.Logger, f Func, level slog.Level, msg string, attrs ...slog.Attr) {
	defer func() { recover() }() // the handler's: nowhere to tell of it
	if !l.Enabled(ctx, level) {
		return
	}
	if f != nil {
		attrs = append(attrs, call(ctx, f)...)
	}
	l.LogAttrs(ctx, level, msg, attrs...)
}

// call returns f(ctx), or, where f panics, an attribute that says so.
func call(ctx context.Context, f Func) (attrs []slog.Attr) {
	defer func() {
		if v := recover(); v != nil {
			attrs = []slog.Attr{slog.String("log_attrs_panic", fmt.Sprint(v))}
		}
	}()
	return f(ctx)
}

// Safe returns l with its handler's panics recovered: a record whose
// handler panics is lost, as one whose handler fails is, and the goroutine
// that logged goes on. For packages that log from goroutines of their own
// (package groups: a listener's, a member's), where a panic of the user's
// handler would end the process.
func Safe(l *slog.Logger) *slog.Logger {
	if _, ok := l.Handler().(safeHandler); ok {
		return l
	}
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
			err = fmt.Errorf("logattrs: the Logger's handler panicked: %v", v)
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
