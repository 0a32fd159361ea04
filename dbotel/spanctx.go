package dbotel

import (
	"context"

	"go.opentelemetry.io/otel/trace"
)

// withSpan returns parent with span in it, as trace.ContextWithSpan does,
// and with parent's AfterFunc, where parent has one: dbctx's and
// wsconsumer's contexts schedule context.AfterFunc themselves, which a
// context made by context.WithValue hides, so that a scope watching its
// context through it would cost a goroutine (see dbctx's cancel.go).
func withSpan(parent context.Context, span trace.Span) context.Context {
	ctx := trace.ContextWithSpan(parent, span)
	if a, ok := parent.(afterFuncer); ok {
		return &spanCtx{Context: ctx, after: a}
	}
	return ctx
}

type afterFuncer interface {
	AfterFunc(func()) func() bool
}

// spanCtx is trace.ContextWithSpan's context with its parent's AfterFunc.
type spanCtx struct {
	context.Context
	after afterFuncer
}

func (c *spanCtx) AfterFunc(f func()) func() bool { return c.after.AfterFunc(f) }
