package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

var errNotPgx = errors.New("dbctx: connection is not a pgx stdlib connection")

// retryable reports whether a statement that failed with err may run
// again on a fresh connection: it must provably have had no effect, and
// the fresh connection must have everything it would have seen.
//
// No effect: nothing was sent (pgx's SafeToRetry, which database/sql sees
// as driver.ErrBadConn), or the server ended the session (class 57P)
// while the connection was outside a transaction, so the statement's
// implicit transaction was rolled back with it; not for a statement that
// can commit partway (CALL, DO, several statements in one string) or that
// works outside transactions (kindOnce).
//
// Nothing lost: first says no statement had run on the connection since
// it was pinned, so the fresh one, on which OnAcquire runs again, has the
// same session. That holds whatever the earlier statements were, what
// the classifier can see and what it cannot.
func (s *Scope) retryable(ctx context.Context, err error, first bool) bool {
	// Inside Atomic only its BEGIN (its tx not yet set) may run again.
	if !first || s.pg == nil || s.rawTx || s.atomicTxOpen() || ctx.Err() != nil {
		return false
	}
	// pgx keeps the status of the last ReadyForQuery: the one from before
	// this statement, since a session ended mid-statement sends none.
	if s.pg.TxStatus() != 'I' {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err) {
		return true
	}
	if s.kind&kindOnce != 0 {
		return false
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "57P")
}

// maxRetries bounds the runs of one statement after the first. One is
// enough for a single backend killed; more cover a round of kills (a
// failover, pg_terminate_backend of every backend), where the next idle
// connection may be dying too, its backend not yet gone when checked.
// Every retried run is proven to have had no effect.
const maxRetries = 3

// run runs one statement on c, and again on another connection while its
// failure proves it had no effect and nothing ran before it (see
// retryable), at most maxRetries more times (one more on a connection
// pinned without the socket check); then it looks at the last error for
// an unusable connection. With quiet set, the statement gets ctx through
// Scope.quiet (see cancel.go).
func run[T any](ctx context.Context, s *Scope, c *sql.Conn, quiet bool, stmt func(context.Context, *sql.Conn) (T, error)) (T, error) {
	retries := maxRetries
	if s.unchecked {
		// One more for a connection pinned without the socket check,
		// which would have found it dead (see Pool.check).
		retries++
	}
	first := !s.used
	v, err := stmt(s.stmtCtx(ctx, quiet), c)
	for try := 0; err != nil && try < retries && s.retryable(ctx, err, first); try++ {
		c, rerr := s.repin(ctx)
		if rerr != nil {
			// No connection to run it again on: that is the news (the
			// database is down: ErrUnavailable).
			err = rerr
			break
		}
		s.apply(s.kind) // on the fresh connection
		v, err = stmt(s.stmtCtx(ctx, quiet), c)
	}
	err = s.observe(ctx, err, first)
	s.ranOn()
	return v, err
}

// ranOn records that a statement ran on the pinned connection: its
// session may now hold what a fresh one would lack.
func (s *Scope) ranOn() {
	if s.conn != nil {
		s.used = true
	}
}

// repin discards the scope's broken connection and pins a fresh one for a
// retry.
func (s *Scope) repin(ctx context.Context) (*sql.Conn, error) {
	s.pool.sawDeath()
	s.unpin(discardBroken)
	s.pool.c.retries.Add(1)
	return s.pinned(ctx)
}

// observe looks at a statement's error for signs that the connection is
// unusable, and returns the error the caller gets. Inside a transaction
// such a connection stays pinned and failing until the boundary, so later
// statements cannot silently run outside the transaction they were meant
// for. Outside one it is discarded at once; if statements had run on it
// before (first false), its session, and whatever they left in it, is
// lost: the scope refuses statements with [ErrSessionLost] until the next
// boundary rather than run them on a fresh connection without that state.
// Otherwise the next statement gets a fresh connection.
func (s *Scope) observe(ctx context.Context, err error, first bool) error {
	if err == nil || s.conn == nil {
		return err
	}
	s.pool.pgxStatementError(err)
	closed := errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		(s.pg != nil && s.pg.IsClosed())
	if !closed {
		return err
	}
	why := discardBroken
	if ctx.Err() != nil {
		why = discardCanceled
	}
	s.pool.sawDeath()
	if s.inTx() {
		s.bad, s.badWhy = true, why
		return err
	}
	s.unpin(why)
	if !first {
		s.lost = true
		return fmt.Errorf("%w: %w", ErrSessionLost, err)
	}
	return err
}

// note notes what query may do to the session before it runs (see
// classify): a statement that may leave state makes the scope dirty, so
// the session is reset before its connection is given back, whether the
// statement succeeds or not (a failed statement may have taken a session
// advisory lock or a sequence value).
func (s *Scope) note(query string) {
	k := s.pool.notes.kind(query)
	s.kind = k
	s.apply(k)
}

// apply marks the pinned connection with what a statement of kind k
// about to run on it may do.
func (s *Scope) apply(k queryKind) {
	if k&kindBegin != 0 {
		s.rawTx = true
	}
	if k&kindState != 0 {
		s.dirty = true
	}
	if k&kindCode != 0 {
		s.sweep = true
	}
	if k&kindPoison != 0 {
		s.poisoned = true
	}
}

// inTx reports whether the pinned connection is, or may be, in a
// transaction.
func (s *Scope) inTx() bool {
	if s.atomicTxOpen() || s.rawTx {
		return true
	}
	if s.pg != nil {
		return s.pg.TxStatus() != 'I'
	}
	return s.x != nil && len(s.x.txs) > 0
}
