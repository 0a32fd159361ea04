package middleware

import (
	"net/http"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/answer"
)

// DBOptions configures [DBWithOpts]. The zero value is the default.
type DBOptions struct {
	// Eager takes a worker slot when the request starts, before the
	// handler runs, and holds it to the end of the request. When none can
	// be had within the pool's wait bounds the client gets 503 with
	// Retry-After at once. Use it for routes that always touch the
	// database: overload is then refused before any work is done. Leave
	// it off (the default) where some requests never touch the database:
	// they should not wait for a slot, and a handler answers ErrBusy with
	// [Answer] where it meets it.
	Eager bool

	// RetryAfter is the delay announced in the Retry-After header of the
	// 503 that answers a refusal of the pool's (dbctx.ErrBusy,
	// ErrUnavailable, ErrPoolClosed): Eager's, [Answer]'s and [Atomic]'s
	// (for the pool of its transaction). Where the request carries scopes
	// of several pools with different RetryAfter, Answer announces the
	// longest of them: the error does not say which pool refused. Default:
	// 1s, also where Answer finds no options (a scope not made by DB). It
	// is rounded up to whole seconds. Package wsconsumer's 503s (at
	// Connect, past MaxSockets) announce 1s whatever this is: it has no
	// such option.
	RetryAfter time.Duration

	// ServerTiming adds a Server-Timing header with the time the request
	// spent in the database and its statement count, shown by browser
	// developer tools: db;dur=<ms>;desc="<n> queries". The header carries
	// what was spent before the response header was written.
	ServerTiming bool
}

// DB returns middleware that gives every request its own scope of pool,
// released when the request ends. See the package documentation. A
// request that carries a scope of pool already (DB mounted twice on its
// route, or again inside Atomic) keeps that one.
//
// With more pools (a read replica, a second database) the request carries
// a scope of each, with slots, connection and cleanup of its own, all
// released when the request ends (a panic discards every connection):
// dbctx.From finds pool's, [dbctx.Pool.From] each one's. It is
// DB(more[0])(…(DB(pool)(h))), which is also how to give each pool
// options of its own with [DBWithOpts].
func DB(pool *dbctx.Pool, more ...*dbctx.Pool) func(http.Handler) http.Handler {
	mw := DBWithOpts(pool, nil)
	if len(more) == 0 {
		return mw
	}
	outer := make([]func(http.Handler) http.Handler, len(more))
	for i, p := range more {
		outer[i] = DBWithOpts(p, nil)
	}
	return func(next http.Handler) http.Handler {
		h := mw(next)
		for i := len(outer) - 1; i >= 0; i-- {
			h = outer[i](h)
		}
		return h
	}
}

// DBWithOpts is [DB] with options; nil opts means defaults. It panics on a
// nil pool or a negative RetryAfter.
//
// The scope is released when the handler returns, including when it
// panics: then the connection, whose state is unknown, is discarded, and
// the panic goes on unchanged to net/http or an outer recoverer.
func DBWithOpts(pool *dbctx.Pool, opts *DBOptions) func(http.Handler) http.Handler {
	if pool == nil {
		panic("middleware: DB expects a non-nil *dbctx.Pool")
	}
	var o DBOptions
	if opts != nil {
		o = *opts
	}
	if o.RetryAfter < 0 {
		panic("middleware: DB expects RetryAfter >= 0")
	}
	if o.RetryAfter == 0 {
		o.RetryAfter = defaultRetryAfter
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if pool.From(r.Context()) != nil {
				// Mounted twice on the route (a router's and a
				// route's, or again inside Atomic): one scope per
				// request and pool, the outer one, whose transaction
				// the handler's statements are in.
				next.ServeHTTP(w, r)
				return
			}
			ctx, scope := pool.Scope(r.Context())
			ctx = &mountCtx{Context: ctx, pool: pool, retryAfter: o.RetryAfter}
			if o.Eager {
				if err := scope.Reserve(ctx); err != nil {
					scope.End()
					// ErrBusy, ErrPoolClosed, or the client's context
					// ended while it waited.
					answer.HTTP(w, answer.Of(err, ctx.Err() != nil), o.RetryAfter)
					return
				}
			}
			if o.ServerTiming {
				w = &timingWriter{ResponseWriter: w, scope: scope}
			}
			// A flag, not recover: the panic must reach net/http with its
			// stack intact.
			normal := false
			defer func() {
				if normal {
					scope.End()
				} else {
					scope.Abort()
				}
			}()
			next.ServeHTTP(w, r.WithContext(ctx))
			normal = true
		})
	}
}
