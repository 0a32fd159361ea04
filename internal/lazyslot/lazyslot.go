// Package lazyslot runs a sync consumer's group event as dbctx.Do runs
// its function on the socket's scope (the boundaries before and after, a
// panic made an error), except that the worker slot is taken at the
// callback's first statement rather than before it: an Event callback
// that only passes the event on takes no slot. dbctx sets Do; wsconsumer
// calls it.
package lazyslot

import "context"

// Do runs fn on scope (a *dbctx.Scope, which ctx carries) as scope's
// pool.Do would, with the slot taken at fn's first statement. A scope
// that has ended, or an async one, refuses as its statements would.
var Do func(ctx context.Context, scope any, fn func(ctx context.Context) error) error

// Holds reports whether scope (a *dbctx.Scope) holds a worker slot now:
// until it does, what the event sends holds up nothing of the database's,
// and is written at once. It does not wait: while the scope is in use
// (a statement of another goroutine), it reports true.
var Holds func(scope any) bool
