package dbctx

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// Scope is a connection-scoped database handle. It takes a worker slot and
// a connection lazily, on first use, and keeps that connection pinned
// until a boundary ([CloseOld], entry and exit of [Do], [Scope.End]) finds
// it unusable (discarded) or obsolete per [Options.ConnMaxAge] (given back,
// clean). A scope that never touches the database takes neither.
//
// Scope satisfies the DBTX interface sqlc generates, in its database/sql
// mode and in its pgx/v5 mode (pgx.go), so generated queries take it
// directly: queries.New(dbctx.From(ctx)).
//
// Every statement the scope runs is read by a SQL lexer before it runs;
// one that may leave state in the session (see the package doc, "Session
// isolation"), the statements of a *sql.Tx from [Scope.BeginTx], raw
// access ([Scope.Conn], [Scope.Pgx]) and the hooks mark the scope dirty,
// and a dirty connection is reset before it is given back, so nothing of
// it reaches the next scope that gets the connection.
//
// The first statement on a pinned connection (the BEGIN of [Atomic]
// included), run outside a transaction, whose answer proves it had no
// effect (nothing was sent, or the server ended the session, SQLSTATE
// class 57P, and the statement cannot commit partway: not CALL, DO or
// several statements in one string) is run again on another connection,
// after OnAcquire there, at most three more times (a round of kills may
// have reached the next idle connection too; one more where the
// connection was given back a moment before and so not looked at).
// Nothing else is retried: not inside a transaction, not once rows were
// delivered, and not once any statement has run on the connection, whose
// session may hold what a fresh one would lack. Such a statement fails
// with [ErrSessionLost], and so does the rest of the unit of work.
//
// A Scope is for one goroutine at a time, like the request or message it
// serves. A nil *Scope is valid: its methods return ErrNoScope.
type Scope struct {
	pool  *Pool
	ctx   scopeCtx
	outer *Scope // the scope the parent context carried (see CloseOld)

	conn     *sql.Conn
	pg       *pgconn.PgConn // nil for other drivers
	sock     *socket        // pg's (see health.go); nil with pg
	rows     *sql.Rows
	row      *sql.Row      // the last QueryRowContext's, which may be left unscanned
	prows    *pgxRows      // the last Query's (pgx.go)
	x        *scopeExtra   // nil until needed
	taken    time.Duration // monotonic() when database/sql handed conn out
	pinnedAt time.Duration // monotonic() when pinned; only with ConnMaxAge > 0
	depth    int           // Do nesting
	atomic   int           // Atomic nesting

	queries int           // statements run, for Timing
	spent   time.Duration // time spent in them, for Timing

	// See cancel.go. armed is written by the scope's goroutine only;
	// interrupt reads it, and everything else here is shared, under imu.
	imu       sync.Mutex
	stopWatch func() bool // ends the watch of the scope's context
	armed     net.Conn    // the pinned connection's socket, under quiet statements
	qctx      quietCtx    // what quiet returns
	tripped   bool        // interrupt set a deadline on armed
	canceled  bool        // the scope's context has ended

	badWhy    discardReason
	async     bool
	ended     bool
	slot      bool      // holds a worker slot
	reserved  bool      // the slot is held until End (Reserve)
	dirty     bool      // the session may hold state: reset before giving it back
	sweep     bool      // and statements PREPAREd in SQL: look for them in the reset
	poisoned  bool      // the session holds state no reset undoes: discard it
	handedOut bool      // Conn gave the *sql.Conn to user code
	rawTx     bool      // a BEGIN seen in raw SQL: never retry
	bad       bool      // a connection-level error seen while in a transaction
	unchecked bool      // pinned without the socket check (see Pool.check)
	used      bool      // a statement ran on the pinned connection: none is retried
	lost      bool      // the session was lost after statements ran on it (see observe)
	kind      queryKind // what the statement under way may do (note)
}

// scopeExtra is the part of a Scope that most scopes never use (Atomic,
// transactions and prepared statements on the pinned connection, the leak
// detector), allocated on first use: a request's or a
// socket's scope that runs plain statements stays small, which every idle
// socket and every request pays for.
type scopeExtra struct {
	atomicCtx context.Context
	beginErr  error    // OnBegin's, in the running Atomic: its statements fail with it
	tx        *sql.Tx  // Atomic's transaction, nil until its first statement
	onCommit  []func() // OnCommit functions of the running Atomic
	txs       []*sql.Tx
	stmts     []*sql.Stmt
	batch     *pgxBatch // SendBatch's results, until closed
	leak      *time.Timer
}

// extra returns s.x, allocating it first if needed.
func (s *Scope) extra() *scopeExtra {
	if s.x == nil {
		s.x = new(scopeExtra)
	}
	return s.x
}

// atomicTxOpen reports whether an Atomic runs and has begun its
// transaction.
func (s *Scope) atomicTxOpen() bool { return s.atomic > 0 && s.x.tx != nil }

// Scope returns a child of ctx carrying a new scope of p, and the scope.
// Call [Scope.End] when the unit of work (request, socket) is over; until
// then [From] finds the scope in the returned context.
//
// A context may carry scopes of several pools (a primary and a replica):
// each has its own slots, connection and boundaries; [Pool.From] finds
// each, [From] the one made last.
func (p *Pool) Scope(ctx context.Context) (context.Context, *Scope) {
	s := &Scope{pool: p, outer: outerOf(ctx)}
	s.ctx = scopeCtx{Context: ctx, s: s}
	return &s.ctx, s
}

// Pool returns the pool the scope belongs to.
func (s *Scope) Pool() *Pool {
	if s == nil {
		return nil
	}
	return s.pool
}

// End releases the scope: an open transaction is rolled back, the
// connection given back (or discarded when unusable) and the slot freed.
// The scope refuses use afterwards with ErrScopeEnded. End is idempotent;
// it must not run concurrently with other use of the scope.
func (s *Scope) End() {
	if s == nil || s.ended {
		return
	}
	s.ended = true
	s.atomic = 0
	if s.x != nil {
		s.x.atomicCtx, s.x.tx = nil, nil
	}
	if err := s.release(context.Background(), true); err != nil {
		// The connection was discarded; nobody is left to return this to.
		s.pool.opts.Logger.Warn("dbctx: ending scope", "err", err)
	}
	s.unwatch()
	s.freeSlot()
}

// Abort is End for a unit of work that ended abnormally (a panic): the
// connection, whose state is unknown, is discarded rather than given back.
func (s *Scope) Abort() {
	if s == nil || s.ended {
		return
	}
	if s.conn != nil {
		s.unpin(discardPanic)
	}
	s.End()
}

// Timing returns how many statements the scope has run and the time spent
// in them, waiting for a slot and a connection included. It feeds the
// Server-Timing header of package middleware.
func (s *Scope) Timing() (queries int, spent time.Duration) {
	if s == nil {
		return 0, 0
	}
	return s.queries, s.spent
}

func (s *Scope) account(start time.Duration) {
	s.queries++
	s.spent += monotonic() - start
}

// epoch starts the monotonic clock of [monotonic].
var epoch = time.Now()

// monotonic is the time since epoch: one read of the monotonic clock,
// where time.Now reads the wall clock too. It times every statement.
func monotonic() time.Duration { return time.Since(epoch) }

// pinned returns the scope's connection, taking a slot and a connection
// first where it has none.
func (s *Scope) pinned(ctx context.Context) (*sql.Conn, error) {
	switch {
	case s == nil:
		return nil, ErrNoScope
	case s.conn != nil:
		return s.conn, nil
	case s.async:
		return nil, ErrAsyncContext
	case s.ended:
		return nil, ErrScopeEnded
	case s.lost:
		return nil, ErrSessionLost
	}
	if err := s.takeSlot(ctx); err != nil {
		return nil, err
	}
	c, looked, err := s.pool.connect(ctx)
	if err != nil {
		if s.depth == 0 {
			s.freeSlot()
		}
		return nil, err
	}
	s.pin(c)
	s.unchecked = !looked
	return c.conn, nil
}

func (s *Scope) pin(c keptConn) {
	s.conn, s.pg, s.sock, s.taken = c.conn, c.pc, c.sock, c.taken
	if s.pool.opts.ConnMaxAge > 0 {
		s.pinnedAt = monotonic()
	}
	s.dirty = s.pool.opts.OnAcquire != nil
	s.sweep = s.dirty
	if s.pool.opts.LeakTimeout > 0 {
		s.watchLeak()
	}
}

// Reserve takes a worker slot for the scope now, waiting as [Do] does,
// and holds it until [Scope.End], whatever the boundaries in between: for
// admission control at the start of a unit of work, so that overload is
// refused (ErrBusy) before any of it is done. It takes no connection.
func (s *Scope) Reserve(ctx context.Context) error {
	switch {
	case s == nil:
		return ErrNoScope
	case s.async:
		return ErrAsyncContext
	case s.ended:
		return ErrScopeEnded
	}
	if err := s.takeSlot(ctx); err != nil {
		return err
	}
	s.reserved = true
	return nil
}

// takeSlot takes a worker slot for the scope unless it holds one.
func (s *Scope) takeSlot(ctx context.Context) error {
	if s.slot {
		return nil
	}
	if err := s.pool.acquireSlot(ctx); err != nil {
		return err
	}
	s.slot = true
	return nil
}

func (s *Scope) freeSlot() {
	if s.reserved && !s.ended {
		return
	}
	if s.slot {
		s.slot = false
		s.pool.releaseSlot()
	}
}

// ExecContext executes a statement that returns no rows, on the scope's
// connection.
func (s *Scope) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	start := monotonic()
	c, err := s.use(ctx, query)
	if err != nil {
		return nil, err
	}
	r, err := run(ctx, s, c, true, func(ctx context.Context, c *sql.Conn) (sql.Result, error) {
		return c.ExecContext(ctx, query, args...)
	})
	s.account(start)
	return r, err
}

// QueryContext executes a statement that returns rows, on the scope's
// connection. Close the rows before the next statement; a boundary closes
// them if you do not.
func (s *Scope) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	start := monotonic()
	c, err := s.use(ctx, query)
	if err != nil {
		return nil, err
	}
	rows, err := run(ctx, s, c, true, func(ctx context.Context, c *sql.Conn) (*sql.Rows, error) {
		return c.QueryContext(ctx, query, args...)
	})
	if err == nil {
		s.rows = rows
	}
	s.account(start)
	return rows, err
}

// QueryRowContext executes a statement that returns at most one row, on the
// scope's connection. As with database/sql, call Scan on the result: it is
// what releases the row.
func (s *Scope) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	start := monotonic()
	c, err := s.use(ctx, query)
	if err != nil {
		return errRow(err)
	}
	row, err := run(ctx, s, c, true, func(ctx context.Context, c *sql.Conn) (*sql.Row, error) {
		row := c.QueryRowContext(ctx, query, args...)
		return row, row.Err()
	})
	s.account(start)
	switch {
	case err == nil:
		s.row = row
	case err != row.Err():
		return errRow(err) // ErrSessionLost around the row's error
	}
	return row
}

// PrepareContext prepares a statement on the scope's connection. The
// statement is closed when the connection is given back.
func (s *Scope) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	if s != nil && s.pool.opts.TransactionPooling {
		// A prepared statement lives on one server connection.
		return nil, fmt.Errorf("%w: PrepareContext", ErrSessionState)
	}
	c, err := s.use(ctx, query)
	if err != nil {
		return nil, err
	}
	st, err := run(ctx, s, c, true, func(ctx context.Context, c *sql.Conn) (*sql.Stmt, error) {
		return c.PrepareContext(ctx, query)
	})
	if err == nil {
		s.extra().stmts = append(s.extra().stmts, st)
	}
	return st, err
}

// BeginTx starts a transaction on the scope's connection. Statements run
// through the scope itself while it is open are part of it too. A
// transaction still open at the next boundary is rolled back. Inside
// [Atomic] it returns ErrInAtomic.
//
// The scope does not see the statements run on the *sql.Tx, so it counts
// them as changing session state: the session is reset before the
// connection is given back (one round trip). [Atomic], whose statements
// go through the scope, costs a reset only if they need one.
func (s *Scope) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	if s != nil && s.atomic > 0 {
		return nil, ErrInAtomic
	}
	tx, err := s.beginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	s.dirty, s.sweep = true, true
	if err := s.onBegin(ctx); err != nil {
		tx.Rollback()
		return nil, err
	}
	return tx, nil
}

// onBegin runs Options.OnBegin in the transaction the scope has just
// begun.
func (s *Scope) onBegin(ctx context.Context) error {
	if h := s.pool.opts.OnBegin; h != nil {
		if err := h(ctx, s); err != nil {
			return fmt.Errorf("dbctx: OnBegin: %w", err)
		}
	}
	return nil
}

// sessionStateError is ErrSessionState for query.
func sessionStateError(query string) error {
	const max = 80
	q := strings.Join(strings.Fields(query), " ")
	if len(q) > max {
		q = q[:max] + "…"
	}
	return fmt.Errorf("%w: %q", ErrSessionState, q)
}

func (s *Scope) beginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	c, err := s.pinned(ctx)
	if err != nil {
		return nil, err
	}
	x := s.extra()
	if s.pg != nil && s.pg.TxStatus() == 'I' {
		// Earlier transactions are over: forget them.
		clear(x.txs)
		x.txs = x.txs[:0]
	}
	// Not quiet: database/sql's watch of a transaction's context is what
	// rolls it back when the context ends, even between statements.
	s.kind = 0
	tx, err := run(ctx, s, c, false, func(ctx context.Context, c *sql.Conn) (*sql.Tx, error) {
		return c.BeginTx(ctx, opts)
	})
	if err == nil {
		x.txs = append(x.txs, tx)
	}
	return tx, err
}

// Conn returns the scope's pinned *sql.Conn, pinning one first if needed.
// The connection stays the scope's: do not Close it. A transaction or
// rows left open on it are ended on the server at the next boundary (the
// connection is rolled back, or discarded), and database/sql's side of them
// when their context ends: until then the *sql.Conn is released in the
// background rather than blocking the boundary. Raw access marks the
// scope dirty, so the session is reset before the connection is given back.
func (s *Scope) Conn(ctx context.Context) (*sql.Conn, error) {
	c, err := s.raw(ctx)
	if err == nil {
		s.handedOut = true
	}
	return c, err
}

// raw pins a connection for raw use, where the scope sees none of the
// statements user code runs: the scope is dirty, and nothing run on the
// connection afterwards is retried. So a connection pinned without the
// socket check is looked at now and, if dead, another pinned, unless
// statements have run on it already.
func (s *Scope) raw(ctx context.Context) (*sql.Conn, error) {
	c, err := s.use(ctx, "")
	for err == nil && s.unchecked && !s.used {
		s.unchecked = false
		if !s.sock.dead() {
			break
		}
		s.pool.sawDeath()
		s.unpin(discardDead)
		c, err = s.use(ctx, "")
	}
	if err != nil {
		return nil, err
	}
	s.rawAccess()
	return c, nil
}

// rawAccess records that user code has the connection itself: the scope
// sees none of what it runs there, so the session is reset before the
// connection is given back, and nothing run afterwards is retried.
func (s *Scope) rawAccess() {
	s.dirty, s.sweep, s.used = true, true, true
	s.disarm() // user code runs statements on it with contexts of its own
}

// Pgx calls fn with the *pgx.Conn under the scope's connection, for what
// database/sql cannot do (COPY, batches, LISTEN). fn must not close or keep
// the connection. It marks the scope dirty like [Scope.Conn]. With a driver
// other than pgx's stdlib it returns an error.
func (s *Scope) Pgx(ctx context.Context, fn func(*pgx.Conn) error) error {
	c, err := s.raw(ctx)
	if err != nil {
		return err
	}
	err = c.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return errNotPgx
		}
		return fn(sc.Conn())
	})
	return s.observe(ctx, err, false)
}

// use pins a connection for a statement and notes what the statement does
// to the session.
func (s *Scope) use(ctx context.Context, query string) (*sql.Conn, error) {
	if s != nil && s.pool.opts.TransactionPooling && s.pool.notes.kind(query)&(kindSession|kindSeqRead) != 0 {
		return nil, sessionStateError(query)
	}
	c, err := s.pinned(ctx)
	if err != nil {
		return nil, err
	}
	if s.atomic > 0 {
		switch {
		case s.x.beginErr != nil:
			return nil, s.x.beginErr
		case s.x.tx == nil:
			if err := s.beginAtomic(); err != nil {
				return nil, err
			}
			c = s.conn // beginning may have moved to a fresh connection
		}
	}
	s.note(query)
	return c, nil
}
