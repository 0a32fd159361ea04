// Package dbctx gives Go code connection-scoped database handles with the
// discipline Django Channels gives Python: database work runs in a bounded
// number of worker slots, and connections are checked and cleaned up at
// every boundary, so long-lived requests and sockets never leak, pin or
// reuse a broken connection.
//
// A [Pool] wraps one *sql.DB (pgx's stdlib driver gets the most out of it).
// A [Scope], carried in a context, is the handle user code queries through:
// it takes a worker slot and a connection on first use and keeps them until
// a boundary. At each boundary ([CloseOld], the entry and exit of [Do], the
// end of a request or a websocket message) a connection that is unusable
// is discarded, and one older than [Options.ConnMaxAge] — with the default
// 0, every one — is given back clean: open transaction rolled back, session
// state reset, [Options.OnRelease] run. Before a connection is used it is
// checked without a round trip, so a backend killed while idle costs no
// failed statement. (One a scope gave back less than 10ms before, as
// under load nearly every one is, is not looked at: if its backend died
// in that moment, the statement is run again on another connection, as
// below, and raw access looks first.)
//
// A connection given back clean is kept by the pool for the next scope,
// for at most 10ms: under load the next scope takes it without going
// through database/sql's check-out. While kept it counts as in use in the
// *sql.DB's Stats (and as Kept in [Pool.Stats]); code that uses the
// *sql.DB directly waits at most those 10ms for it, and every connection
// goes back through the *sql.DB at least every 500ms, so its limits
// (SetConnMaxLifetime, SetConnMaxIdleTime) still apply, and so does the
// driver's session reset (pgx's stdlib.OptionResetSession), though at
// those check-outs only, not at every pin: per-pin work belongs in
// [Options.OnAcquire].
//
//	pool := dbctx.New(db, nil)
//	err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
//		return s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", id).Scan(&name)
//	})
//
// Past the slots, callers queue, first come first served, up to
// [Options.MaxWaiting] for at most [Options.WaitTimeout], then get
// [ErrBusy]: overload is refused, never queued without bound.
//
// A statement is canceled when its context ends, as with database/sql: it
// returns the context's error, and the connection is closed (pgx asks the
// server to cancel the statement) and discarded at the next boundary.
// Statements whose context is the scope's own (a request's, a socket's)
// are watched once per scope rather than once per statement, which spares
// database/sql's goroutine and pgx's watch for each of them.
//
// Packages middleware and wsconsumer put a scope on every HTTP request and
// websocket; there handlers call [From] (sync code) or [Do] (async code).
// The examples are the best way to learn the API.
package dbctx
