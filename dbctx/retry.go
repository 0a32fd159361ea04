package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
)

var errNotPgx = errors.New("dbctx: connection is not a pgx stdlib connection")

// retryable reports whether a statement of kind k that failed on c with
// err may run again on a fresh connection: it must provably have had no
// effect, and the fresh connection must have everything it would have
// seen.
//
// No effect: nothing was sent (pgx's SafeToRetry, which database/sql sees
// as driver.ErrBadConn; but pgx's "conn closed" only where the connection
// was closed before the statement went, which open says it was not:
// pgconn also reports so a connection that failed while the answer to a
// string sent in the simple protocol was read, where the server may have
// committed it: a backend terminated while its commit waited for a
// synchronous standby, a network cut after the commit; even a statement
// that leaves no session state may have done what commits, a NOTIFY), or
// the server ended the session (class 57P)
// while the connection was outside a transaction, so the statement's
// implicit transaction was rolled back with it, and what was sent before
// it in its round trip (prefix.go) too; not for a statement that can
// commit partway (CALL, DO, several statements in one string) or that
// works outside transactions (kindOnce).
//
// Nothing lost: first says no statement had run on the connection since
// it was pinned, so the fresh one, on which OnAcquire runs again and
// which gets the settings of the statement's context, has the same
// session. That holds whatever the earlier statements were, what the
// classifier can see and what it cannot.
//
// On another driver than pgx's, whose connection dbscope cannot look
// into, the same holds where the driver says nothing was sent
// (driver.ErrBadConn) or where the server's error (its SQLSTATE, see
// sqlState) is of class 57P and the scope knew of no transaction: the
// statement is the first, and none was begun in SQL or by BeginTx.
func (s *Scope) retryable(ctx context.Context, c *session, k queryKind, err error, first, open bool) bool {
	// Inside Atomic only its BEGIN (not yet begun) may run again.
	if !first || c.inRawTx() || s.atomicTxOpen() || ctx.Err() != nil {
		return false
	}
	if c.pin.resetBad {
		// The reset owed by the connection's last user failed before
		// the statement: nothing of it ran, and the connection, which
		// the last user's state may keep failing so, is given up.
		return true
	}
	if c.pc == nil {
		return !s.inTx(c) && (errors.Is(err, driver.ErrBadConn) || k&kindOnce == 0 && serverEnded(err))
	}
	// pgx keeps the status of the last ReadyForQuery: the one from before
	// this statement, since a session ended mid-statement sends none.
	if c.state().tx != 'I' || open && errors.Is(err, pgconn.ErrConnClosed) {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err) {
		return true
	}
	if k&kindOnce != 0 {
		return false
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "57P")
}

// replannable reports whether a statement that failed with err on the
// scope's connection may run again on it: a statement pgx kept prepared
// (or a description kept) that is gone, or whose result type changed
// since (PostgreSQL
// re-parses a prepared statement where the search_path or the schema
// changed, and refuses to run it where its result type changed), outside
// any transaction. PostgreSQL refused it before it ran, its implicit
// transaction and what was sent before it in its round trip rolled back,
// and pgx dropped it from its cache on the error: run again, it is
// prepared anew.
func (s *Scope) replannable(ctx context.Context, k queryKind, err error) bool {
	c := s.c
	// Not what may commit partway (CALL, DO, several statements in one
	// string), nor what runs code (a function whose refused statement
	// came after what it did: a sequence value taken): only a statement
	// PostgreSQL refused as a whole, before it ran.
	if k&(kindOnce|kindCode) != 0 || c == nil || c.pc == nil || ctx.Err() != nil || c.inRawTx() || s.atomicTxOpen() || c.state().tx != 'I' {
		return false
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return false
	}
	// Or a description kept (pgx's cache_describe, dbscope's own before a
	// prefix) that no longer matches the statement as PostgreSQL now
	// reads it: its Bind is refused, with the description dropped.
	// Or a statement pgx kept prepared that code of the user's (DO, a
	// function, CALL, in this scope or an earlier one) deallocated
	// (DEALLOCATE ALL): its Bind is refused, and pgx drops it from its
	// cache as it does on any error. (A statement refused so in SQL,
	// EXECUTE, is code, not run again above.)
	// Each is refused so only before it runs where the error comes with
	// no context: the same error raised inside code the classifier did
	// not see (a view's function, a trigger's, a default's) has one ("PL/pgSQL
	// function … at EXECUTE"), and comes after what that code did.
	if pe.Where != "" {
		return false
	}
	return pe.Code == "0A000" && pe.Routine == "RevalidateCachedQuery" ||
		pe.Code == "08P01" && pe.Routine == "exec_bind_message" ||
		pe.Code == "26000" && pe.Routine == "FetchPreparedStatement"
}

// maxRetries bounds the runs of one statement after the first. One is
// enough for a single backend killed; more cover a round of kills (a
// failover, pg_terminate_backend of every backend), where the next idle
// connection may be dying too, its backend not yet gone when checked.
// Every retried run is proven to have had no effect.
const maxRetries = 3

// repin discards the scope's broken connection and pins a fresh one for a
// retry.
func (s *Scope) repin(ctx context.Context, err error) (*session, error) {
	if s.c.pin.resetBad && !s.c.gone(err) {
		s.pool.logCleanup(msgResetFailed, err)
		s.unpin(discardReset)
	} else {
		s.pool.sawDeath()
		s.unpin(discardBroken)
	}
	s.pool.c.retries.Add(1)
	return s.pinned(ctx)
}

const msgResetFailed = "dbctx: the session reset owed before a statement failed; connection discarded, statement run on another"

// observe looks at a statement's error for signs that the connection is
// unusable, and returns the error the caller gets. Under s.mu. Inside a
// transaction such a connection stays pinned and failing until the
// boundary, so later statements cannot silently run outside the
// transaction they were meant for. Outside one it is discarded at once;
// if statements had run on it before (first false), its session, and
// whatever they left in it, is lost: the scope refuses statements with
// [ErrSessionLost] until the next boundary rather than run them on a
// fresh connection without that state. Otherwise the next statement gets
// a fresh connection.
func (s *Scope) observe(ctx context.Context, err error, first bool) (out error) {
	return s.observeDead(ctx, err, first, false)
}

// observeDead is observe, told by dead that the connection is known to
// have failed.
func (s *Scope) observeDead(ctx context.Context, err error, first, dead bool) (out error) {
	c := s.c
	if err == nil || c == nil {
		return err
	}
	if poolerFull(err) {
		defer func() { out = s.pool.poolerBusy(out) }()
	}
	s.pool.pgxStatementError(err)
	closed := dead || errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		(c.pc != nil && c.state().closed) || c.pc == nil && (serverEnded(err) || (netFailed(err) || ctx.Err() != nil) && !s.pool.alive(c))
	if !closed {
		return err
	}
	why := discardBroken
	if ctx.Err() != nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// A context ended mid-statement: ctx, or one of the user's own
		// inside Scope.Pgx's function, which the driver cut the
		// connection for. No connection failed.
		why = discardCanceled
		if cerr := ctx.Err(); cerr != nil && !errors.Is(err, cerr) {
			// The driver's word for a statement its context ended before
			// it was sent (pgx's stdlib: driver.ErrBadConn) says nothing
			// of the context, whose end is the news.
			err = fmt.Errorf("%w: %w", cerr, err)
		}
	}
	s.pool.sawDeath()
	if s.inTx(c) {
		// The transaction is lost with the session: the scope's
		// statements fail until the boundary, which discards the
		// connection for the first cause seen (a rollback's failure
		// after a canceled COMMIT is not news).
		if !c.pin.bad {
			c.pin.bad, c.pin.badWhy = true, why
		}
		s.loseSession(why)
		return fmt.Errorf("%w: %w", ErrSessionLost, err)
	}
	s.unpin(why)
	if !first {
		s.loseSession(why)
		return fmt.Errorf("%w: %w", ErrSessionLost, err)
	}
	return err
}

// netFailed reports whether err, of another driver's statement, may be
// its connection's failure as the network tells it (an unexpected EOF, a
// reset, a net.Error), not the server's word on the statement (no
// SQLSTATE). It may as well be an error of the user's that wraps one (an
// argument's Value decoding a truncated blob: io.ErrUnexpectedEOF),
// with nothing sent: observe asks the connection whether it lives
// before it counts it lost.
func netFailed(err error) bool {
	if sqlState(err) != "" {
		return false
	}
	var ne net.Error
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) || errors.As(err, &ne)
}

// rowsFailed returns err, the error that rows the scope handed out (of
// Query, QueryContext, a batch's Query) ended with as they were read or
// closed, as the scope tells a statement's error (observe): where the
// connection failed under them, the session is lost (ErrSessionLost,
// wrapping err: the rows' statement had run) and the connection dropped
// now, not found dead by the scope's next statement. ctx is the rows'
// statement's. No lock of the rows is held: a boundary holds s.mu as it
// closes them. Rows that end without error do not come here.
func (s *Scope) rowsFailed(ctx context.Context, c *session, err error) error {
	if err == nil || errors.Is(err, errRowsCut) || poolerFull(err) {
		return err
	}
	_, err = s.failedUnder(ctx, c, err, false)
	return err
}

// failedUnder returns err, of results the scope handed out on c (rows, a
// batch's) that failed after the statement that made them returned, as
// observe tells a statement's error; first says the statement was the
// first on c. gone reports whether the connection went with the session
// (observe closed the results). Where the scope is past c (a boundary),
// err is returned as it is; where the session was lost already, as
// ErrSessionLost. No lock of the results is held: a boundary holds s.mu
// as it closes them.
func (s *Scope) failedUnder(ctx context.Context, c *session, err error, first bool) (gone bool, out error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.c != c:
		return false, err // the scope is past the connection (a boundary)
	case s.lost:
		if errors.Is(err, ErrSessionLost) {
			return false, err
		}
		return false, fmt.Errorf("%w: %w", ErrSessionLost, err)
	}
	// Another driver's error without SQLSTATE (an unexpected EOF, a
	// reset) says nothing of its connection, which the driver may have
	// closed under database/sql: ask it, on this path alone.
	dead := c.pc == nil && sqlState(err) == "" && ctx.Err() == nil &&
		!errors.Is(err, driver.ErrBadConn) && !errors.Is(err, sql.ErrConnDone) && !s.pool.alive(c)
	// The statement was sent (its results were handed out): outside a
	// transaction, a connection that failed before its answer, all of
	// it, leaves unknown whether it committed, as a statement's does.
	unknown := s.outcomeUnknown(ctx, c, err, true)
	out = s.observeDead(ctx, err, first, dead)
	if unknown {
		s.pool.c.outcomesUnknown.Add(1)
		out = fmt.Errorf("%w: %w", errOutcomeUnknown, out)
	}
	return s.c != c, out
}

// poolerFull reports whether err is PgBouncer's refusal of a statement
// that waited for a server connection past its query_wait_timeout: every
// one of its pool (default_pool_size) was in use. Nothing was sent to
// PostgreSQL; PgBouncer closes the client's connection.
func poolerFull(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "08P01" && pe.Message == "query_wait_timeout"
}

// poolerBusy returns err, PgBouncer's query_wait_timeout, as the
// overload it is (ErrBusy, counted in Stats.Busy), and logs it.
func (p *Pool) poolerBusy(err error) error {
	p.c.busy.Add(1)
	p.opts.Logger.Warn(msgPoolerFull)
	return poolerBusyError(err)
}

// poolerBusyError is err, PgBouncer's query_wait_timeout, as ErrBusy.
func poolerBusyError(err error) error {
	return fmt.Errorf("%w: PgBouncer's server connections all in use past its query_wait_timeout: %w", ErrBusy, err)
}

// msgPoolerFull is the warning of a statement PgBouncer refused with
// query_wait_timeout.
const msgPoolerFull = "dbctx: PgBouncer found no free server connection within its query_wait_timeout; raise its default_pool_size (or max_db_connections), or shed load"

// outcomeUnknown reports whether err, of a statement sent on c's pgx
// connection while it was open, leaves unknown whether the statement ran
// and committed: it ran outside a transaction (its implicit transaction
// commits as it ends; not after a BEGIN of Atomic's, of SQL or of
// BeginTx, which the server's last status may not show yet: sent in the
// statement's round trip), the connection failed before the server's
// answer (no error of the server's, PgBouncer's word that its server
// connection failed excepted; pgconn closed), and not because ctx
// ended (the caller gave up: that is its news). c is nil where a retry
// found no connection: that retry sent nothing.
//
// On another driver, whose connection dbscope cannot look into: outside
// any transaction the scope knows of, an error that is the network's
// (netFailed: no SQLSTATE) on a connection that no longer answers; not
// driver.ErrBadConn, which says nothing was sent.
func (s *Scope) outcomeUnknown(ctx context.Context, c *session, err error, open bool) bool {
	var pe *pgconn.PgError
	if c == nil || ctx.Err() != nil || errors.As(err, &pe) && !poolerLostServer(pe) ||
		s.atomic > 0 || c.inRawTx() || len(c.pin.txs) > 0 {
		return false
	}
	if c.pc == nil {
		return !s.inTx(c) && netFailed(err) && !errors.Is(err, driver.ErrBadConn) && !s.pool.alive(c)
	}
	if !open {
		return false
	}
	st := c.state()
	return st.closed && st.tx == 'I'
}

// open reports whether c's pgx connection is open (pgconn has not closed
// it).
func (c *session) open() bool { return c.pc != nil && !c.state().closed }

// gone reports whether c's connection failed for good with err: pgconn
// says it is closed, or, on another driver, the driver said so
// (driver.ErrBadConn) or the server ended the session (serverEnded).
func (c *session) gone(err error) bool {
	if c.pc != nil {
		return c.pc.IsClosed()
	}
	return errors.Is(err, driver.ErrBadConn) || serverEnded(err)
}

// serverEnded reports whether err is the server ending the session (class
// 57P: an administrator's or a crash's shutdown, or a server not yet
// accepting connections), as a driver reports it: by its SQLSTATE (see
// sqlState). pgx's connection needs no such guess: pgconn says whether it
// is closed.
func serverEnded(err error) bool { return strings.HasPrefix(sqlState(err), "57P") }

// sqlState returns err's SQLSTATE where err, or one it wraps, has the
// SQLState method that pgx's and lib/pq's errors have; else "".
func sqlState(err error) string {
	var se interface{ SQLState() string }
	if errors.As(err, &se) {
		return se.SQLState()
	}
	return ""
}

// alive asks a connection of another driver whether it still works, after
// a statement its context ended: a driver may have closed it (pgx's
// does), and what it would say of the next statement, driver.ErrBadConn,
// would come too late to try that one again. It costs a round trip, on
// that path alone. The driver is asked itself: database/sql, told by
// PingContext that the connection is bad, closes the *sql.Conn, and that
// close waits for a *sql.Tx of BeginTx open on it to end, whose end
// waits for the scope (its rollback, or the boundary): for ever. The
// connection is discarded by the caller instead, its *sql.Tx rolled
// back first.
func (p *Pool) alive(c *session) bool {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	var err error
	if rerr := c.pin.conn.Raw(func(dc any) error {
		if pg, ok := dc.(driver.Pinger); ok {
			err = pg.Ping(ctx)
		}
		return nil
	}); rerr != nil {
		return false
	}
	return err == nil
}
