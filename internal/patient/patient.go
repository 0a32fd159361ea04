// Package patient marks the contexts of work that waits its turn for a
// worker slot rather than be refused: group events, which wsconsumer runs
// for every member of a group at once, each waiting for one slot at a
// time, and which refusing would close the sockets. dbctx reads the mark
// (Pool's slot queue); wsconsumer sets it.
package patient

import (
	"context"

	"github.com/dbscope/dbscope/internal/afterfunc"
)

type key struct{}

// With returns a child of ctx under which a wait for a slot goes beyond
// Options.MaxWaiting (not beyond WaitTimeout), not counted against it.
func With(ctx context.Context) context.Context { return &patientCtx{ctx} }

// Is reports whether ctx is marked with With.
func Is(ctx context.Context) bool { return ctx.Value(key{}) != nil }

// patientCtx is With's context. It forwards AfterFunc to its parent where
// the parent has one (a socket's context, through dbctx's scope and async
// contexts), so that context.AfterFunc, cancelable children and the
// statement watch of a scope made under it (dbctx.Do in an async event)
// register there rather than start a goroutine each, as they would
// under a context.WithValue.
type patientCtx struct{ context.Context }

func (c *patientCtx) Value(k any) any {
	if k == any(key{}) {
		return true
	}
	return c.Context.Value(k)
}

func (c *patientCtx) AfterFunc(f func()) func() bool { return afterfunc.Forward(c.Context, f) }
