// Package middleware attaches a [dbctx] scope to every HTTP request, the
// port of Django's request-boundary close_old_connections and
// ATOMIC_REQUESTS for net/http.
//
// [DB] gives each request a fresh scope: handlers query through
// dbctx.From(r.Context()) (or dbctx.Do), and whatever the handler does —
// return, panic, lose its client — the scope is released at the end of the
// request: an open transaction rolled back, the session reset if dirty, the
// connection given back or, when unusable, discarded. A request that never
// touches the database takes no slot and no connection. [Atomic] runs a
// request's database work in one transaction and holds the response until
// the commit succeeded, so a client never sees a 2xx for work that was not
// committed.
//
// Both are func(http.Handler) http.Handler and mount on http.ServeMux,
// chi or any router:
//
//	pool := dbctx.New(db, nil)
//	mux := http.NewServeMux()
//	mux.Handle("POST /items", middleware.Atomic(createItem))
//	http.ListenAndServe(addr, middleware.DB(pool)(mux))
//
// When the pool is overloaded, statements fail with dbctx.ErrBusy, while
// the database (or the pooler in front of it) is down with
// dbctx.ErrUnavailable, and when it cannot be connected to until the
// configuration is fixed (a database or role that does not exist, a
// wrong password) with dbctx.ErrMisconfigured, which the pool logs once.
// Answer them with [Answer] (503 Service Unavailable with Retry-After for
// the first two, 500 for the last, a bare 499 for a client that went away),
// or set [DBOptions].Eager to refuse the request before the handler runs
// when the pool is full.
package middleware
