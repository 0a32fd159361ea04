// Package afterfunc registers after-functions with a context that
// schedules its own (a socket's context, dbctx's scope and async
// contexts), as context.AfterFunc and the cancelable children of a
// context look for, where context.AfterFunc would otherwise start a
// goroutine for each.
package afterfunc

import "context"

// Scheduler is a context that schedules its own after-functions.
type Scheduler interface {
	AfterFunc(func()) func() bool
}

// Forward is context.AfterFunc(parent, f), registered with parent itself
// where parent is a Scheduler.
func Forward(parent context.Context, f func()) func() bool {
	if a, ok := parent.(Scheduler); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(parent, f)
}
