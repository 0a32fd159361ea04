// Package lazyslot runs a sync consumer's group event as dbctx.Do runs
// its function on the socket's scope (the boundaries before and after, a
// panic made an error), except that the worker slot is taken at the
// callback's first statement rather than before it: an Event callback
// that only passes the event on takes no slot. dbctx sets Do; wsconsumer
// calls it.
package lazyslot

import "context"

// Do runs fn on the scope of pool (a *dbctx.Pool) that ctx carries, as
// pool.Do would, with the slot taken at fn's first statement. Where ctx
// carries no usable scope of pool, it is pool.Do.
var Do func(ctx context.Context, pool any, fn func(ctx context.Context) error) error
