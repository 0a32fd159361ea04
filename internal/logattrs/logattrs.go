// Package logattrs logs records about a request or a websocket with the
// attributes that the caller's function finds in its context (a request
// id, a user, a tenant): the LogAttrs option of packages middleware and
// wsconsumer.
package logattrs

import (
	"context"
	"log/slog"
)

// Func returns the attributes of the unit of work ctx belongs to.
type Func = func(ctx context.Context) []slog.Attr

// Log logs msg at level with attrs, then f's attributes for ctx (f may be
// nil). The record is logged with ctx too, for handlers that read it.
// f is called only when l logs at level.
func Log(ctx context.Context, l *slog.Logger, f Func, level slog.Level, msg string, attrs ...slog.Attr) {
	if !l.Enabled(ctx, level) {
		return
	}
	if f != nil {
		attrs = append(attrs, f(ctx)...)
	}
	l.LogAttrs(ctx, level, msg, attrs...)
}
