package dbctx

import "context"

// scopeKey is the context key of a scope: a pointer, so that a lookup
// compares two words rather than calling the runtime to compare values.
var scopeKey = &ctxKey{"dbctx.scope"}

type ctxKey struct{ name string }

// scopeCtx is the context a scope hands out: its parent plus the scope,
// in the scope's own allocation (Async's stand alone: its scope is the
// pool's one async scope).
type scopeCtx struct {
	context.Context
	s *Scope
}

func (c *scopeCtx) Value(key any) any {
	if key == any(scopeKey) {
		return c.s
	}
	return c.Context.Value(key)
}

// afterFuncer is a context that schedules its own after-functions, as
// context.AfterFunc looks for.
type afterFuncer interface {
	AfterFunc(func()) func() bool
}

// AfterFunc lets context.AfterFunc, and the cancelable children of the
// context, register with the nearest parent that has such a method, where
// they would otherwise start a goroutine each.
func (c *scopeCtx) AfterFunc(f func()) func() bool { return afterFunc(c.Context, f) }

// afterFunc is context.AfterFunc without its own allocation where ctx
// schedules after-functions itself. Scope contexts, which only add a
// value, are looked through rather than asked one after the other.
func afterFunc(ctx context.Context, f func()) func() bool {
	for {
		sc, ok := ctx.(*scopeCtx)
		if !ok {
			break
		}
		ctx = sc.Context
	}
	if a, ok := ctx.(afterFuncer); ok {
		return a.AfterFunc(f)
	}
	return context.AfterFunc(ctx, f)
}

// From returns the scope that ctx carries, or nil. A nil *Scope is safe to
// call: every method returns ErrNoScope.
func From(ctx context.Context) *Scope {
	s, _ := ctx.Value(scopeKey).(*Scope)
	return s
}

// Async returns a context whose scope refuses direct use with
// ErrAsyncContext: database work from it must go through [Do], which runs
// on a scope of its own. It is for code whose callbacks may run
// concurrently, such as async websocket consumers; it ports the check
// behind Django's SynchronousOnlyOperation. ctx must carry a scope.
func Async(ctx context.Context) context.Context {
	parent := From(ctx)
	if parent == nil || parent.async {
		return ctx
	}
	// The async scope holds nothing and refuses everything, so one per
	// pool serves every context: a socket keeps only the context.
	return &scopeCtx{Context: ctx, s: parent.pool.async}
}

// IsAsync reports whether ctx was marked with [Async] (and is not inside a
// [Do] that runs on a scope of its own).
func IsAsync(ctx context.Context) bool {
	s := From(ctx)
	return s != nil && s.async
}

var patientKey = &ctxKey{"dbctx.patient"}

// Patient returns a context under which [Do] and a scope's statements
// wait for a worker slot beyond [Options.MaxWaiting], though not beyond
// WaitTimeout, and do not count against it: for work whose number is
// bounded elsewhere, which must wait its turn rather than be refused.
// wsconsumer runs group events under it: a message to a group wakes every
// member at once, each waits for one slot at a time, and refusing them
// would close the sockets. Other callers are refused only when as many of
// their own wait as MaxWaiting allows; they queue behind the patient ones.
func Patient(ctx context.Context) context.Context { return context.WithValue(ctx, patientKey, true) }
