package dbctx

import (
	"context"

	"github.com/dbscope/dbscope/internal/afterfunc"
)

// scopeKey is the context key of a scope: a pointer, so that a lookup
// compares two words rather than calling the runtime to compare values.
var scopeKey = &ctxKey{name: "dbctx.scope"}

// realScopeKey finds the innermost scope ctx carries through an Async
// context, which answers scopeKey with its pool's async scope (Detach).
var realScopeKey = &ctxKey{name: "dbctx.scope, through Async"}

type ctxKey struct {
	name string
	pool *Pool // for a pool's key (Pool.From), its pool
}

// scopeCtx is the context a scope hands out: its parent plus the scope,
// in the scope's own allocation. It answers the key of every scope
// (From) and its pool's key (Pool.From).
type scopeCtx struct {
	context.Context
	s *Scope
}

func (c *scopeCtx) Value(key any) any {
	if key == any(scopeKey) || key == any(c.s.pool.key) || key == any(realScopeKey) {
		return c.s
	}
	return c.Context.Value(key)
}

// AfterFunc lets context.AfterFunc, and the cancelable children of the
// context, register with the nearest parent that has such a method, where
// they would otherwise start a goroutine each.
func (c *scopeCtx) AfterFunc(f func()) func() bool { return afterFunc(c.Context, f) }

// afterFunc is context.AfterFunc without its own allocation where ctx
// schedules after-functions itself. Scope and async contexts, which only
// add a value, are looked through rather than asked one after the other.
func afterFunc(ctx context.Context, f func()) func() bool {
	for {
		switch c := ctx.(type) {
		case *scopeCtx:
			ctx = c.Context
			continue
		case *asyncCtx:
			ctx = c.Context
			continue
		}
		break
	}
	return afterfunc.Forward(ctx, f)
}

// From returns the scope that ctx carries, or nil. Where ctx carries
// scopes of several pools (middleware.DB with several pools, a scope made
// inside another's), it is the innermost: the one attached last, which
// for middleware.DB(primary, replica) is primary's. [Pool.From] finds the
// scope of one pool. A nil *Scope is safe to call: every method returns
// ErrNoScope.
func From(ctx context.Context) *Scope {
	s, _ := ctx.Value(scopeKey).(*Scope)
	return s
}

// From returns the innermost scope of p that ctx carries, or nil: with
// scopes of several pools in one unit of work (a primary and a replica),
// each pool finds its own.
func (p *Pool) From(ctx context.Context) *Scope {
	s, _ := ctx.Value(p.key).(*Scope)
	return s
}

// asyncCtx is the context Async returns: every scope ctx carries answers
// as its pool's async scope, which refuses direct use.
type asyncCtx struct {
	context.Context
	pool *Pool // of the innermost scope, which From finds
}

func (c *asyncCtx) Value(key any) any {
	if key == any(scopeKey) {
		return c.pool.async
	}
	if k, ok := key.(*ctxKey); ok && k.pool != nil {
		if c.Context.Value(key) == nil {
			return nil
		}
		return k.pool.async
	}
	return c.Context.Value(key)
}

func (c *asyncCtx) AfterFunc(f func()) func() bool { return afterFunc(c.Context, f) }

// Async returns a context whose scopes refuse direct use with
// ErrAsyncContext: database work from it must go through [Do] (or
// [Pool.Do]), which runs on a scope of its own. It is for code whose
// callbacks may run concurrently, such as async websocket consumers; it
// ports the check behind Django's SynchronousOnlyOperation. ctx must carry
// a scope; with several pools' scopes, all of them refuse.
func Async(ctx context.Context) context.Context {
	parent := From(ctx)
	if parent == nil || parent.async {
		return ctx
	}
	// The async scopes hold nothing and refuse everything, so one per
	// pool serves every context: a socket keeps only the context.
	return &asyncCtx{Context: ctx, pool: parent.pool}
}

// realOf returns the innermost scope ctx carries, through an Async
// context, or nil.
func realOf(ctx context.Context) *Scope {
	s, _ := ctx.Value(realScopeKey).(*Scope)
	return s
}

// outerOf returns the scope ctx carries for s.outer: the innermost one,
// unless it refuses direct use (async), where the chain of boundaries
// stops.
func outerOf(ctx context.Context) *Scope {
	if o := From(ctx); o != nil && !o.async {
		return o
	}
	return nil
}
