package middleware

import (
	"context"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/afterfunc"
)

// defaultRetryAfter is the Retry-After of a refusal whose pool's
// DBOptions are unknown (the scope was not made by DB), and
// DBOptions.RetryAfter's default.
const defaultRetryAfter = time.Second

// mountCtx is the context DBWithOpts hands the handler: the scope's
// context plus the pool and the RetryAfter of the mount that made the
// scope, which Answer and Atomic announce for that pool's refusals. It
// costs the one allocation a context.WithValue would, and forwards
// AfterFunc to the scope's context, as dbctx's contexts do, where a
// context.WithValue would make context.AfterFunc and the cancelable
// children of the handler's context start a goroutine each.
type mountCtx struct {
	context.Context
	pool       *dbctx.Pool
	retryAfter time.Duration
}

type mountKey struct{}

func (c *mountCtx) Value(key any) any {
	if key == any(mountKey{}) {
		return c
	}
	return c.Context.Value(key)
}

func (c *mountCtx) AfterFunc(f func()) func() bool { return afterfunc.Forward(c.Context, f) }

// mountOf returns the innermost mount ctx carries, or nil.
func mountOf(ctx context.Context) *mountCtx {
	m, _ := ctx.Value(mountKey{}).(*mountCtx)
	return m
}

// retryAfter returns the Retry-After announced for a refusal in ctx:
// that of the mount of pool (the innermost, whose scope the request
// uses), or with a nil pool, where the refusal may be any mounted pool's
// (dbctx's errors do not say whose they are), the longest of the
// mounts'; the default where ctx carries none.
func retryAfter(ctx context.Context, pool *dbctx.Pool) time.Duration {
	d := time.Duration(0)
	for m := mountOf(ctx); m != nil; m = mountOf(m.Context) {
		switch {
		case pool == nil:
			d = max(d, m.retryAfter)
		case m.pool == pool:
			return m.retryAfter
		}
	}
	if d == 0 {
		return defaultRetryAfter
	}
	return d
}
