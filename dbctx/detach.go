package dbctx

import "context"

// Detach hands the work of ctx over to a unit of work that outlives it
// and takes scopes of its own, such as a websocket accepted from an HTTP
// request (package wsconsumer). It ends the scopes ctx carries, of every
// pool (those middleware.DB put in the request), which give back their
// slots and connections now rather than when their owner ends them (End
// is then a no-op), and returns a context with ctx's values and
// cancellation but none of those scopes: [From] and [Pool.From] find
// nothing in it, and a scope made from it has no outer scope.
//
// ok is false, and nothing is ended, where one of the scopes runs an
// [Atomic] (middleware.Atomic around the handler): work cannot leave a
// transaction that commits when the request ends.
func Detach(ctx context.Context) (_ context.Context, ok bool) {
	var scopes []*Scope
	real, _ := ctx.Value(realScopeKey).(*Scope) // under Async too
	for s := real; s != nil; s = s.outer {
		s.mu.Lock()
		inAtomic := s.atomic > 0
		s.mu.Unlock()
		if inAtomic {
			return ctx, false
		}
		scopes = append(scopes, s)
	}
	for _, s := range scopes {
		s.End()
	}
	return &detachedCtx{ctx}, true
}

// detachedCtx is the context Detach returns: ctx without its scopes.
type detachedCtx struct{ context.Context }

func (c *detachedCtx) Value(key any) any {
	if k, ok := key.(*ctxKey); ok && (k == scopeKey || k == realScopeKey || k.pool != nil) {
		return nil
	}
	return c.Context.Value(key)
}

func (c *detachedCtx) AfterFunc(f func()) func() bool { return afterFunc(c.Context, f) }
