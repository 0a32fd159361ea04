// Package patient marks the contexts of work that waits its turn for a
// worker slot rather than be refused: group events, which wsconsumer runs
// for every member of a group at once, each waiting for one slot at a
// time, and which refusing would close the sockets. dbctx reads the mark
// (Pool's slot queue); wsconsumer sets it.
package patient

import "context"

type key struct{}

// With returns a child of ctx under which a wait for a slot goes beyond
// Options.MaxWaiting (not beyond WaitTimeout), not counted against it.
func With(ctx context.Context) context.Context { return context.WithValue(ctx, key{}, true) }

// Is reports whether ctx is marked with With.
func Is(ctx context.Context) bool { return ctx.Value(key{}) != nil }
