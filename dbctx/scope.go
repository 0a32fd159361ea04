package dbctx

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/dbscope/dbscope/internal/scopes"
)

// Scope is a connection-scoped database handle. It takes a worker slot and
// a connection lazily, on first use, and keeps that connection pinned
// until a boundary ([CloseOld], entry and exit of [Do], [Scope.End]) finds
// it unusable (discarded) or obsolete per [Options.ConnMaxAge] (given back,
// clean). A scope that never touches the database takes neither.
//
// Scope satisfies the DBTX interface sqlc generates, in its database/sql
// mode and in its pgx/v5 mode, so generated queries take it directly:
// queries.New(dbctx.From(ctx)).
//
// A Scope is safe for concurrent use, as database/sql's *sql.Conn is: the
// goroutines of one unit of work (an errgroup in a handler) share its one
// connection, and their statements run on it one after another. Rows
// hold the connection until they are closed (or read to the end): a
// statement of another goroutine meanwhile fails at once with
// [ErrConnBusy]. QueryRowContext and QueryRow read their row before they
// return, so they never hold it. Boundaries ([Scope.End], [CloseOld])
// must not run while other goroutines still use the scope; nested
// [Atomic] and [Do] calls belong on one goroutine.
//
// A nil *Scope is valid: its methods return ErrNoScope.
type Scope struct {
	pool  *Pool
	ctx   scopeCtx
	outer *Scope // the scope the parent context carried (see CloseOld)

	// txOuter is the scope the parent context carried, through Async
	// (realOf): whose Atomic, and its outer scopes', OnCommit functions
	// of this scope wait for.
	txOuter *Scope

	// mu serializes the statements and boundaries of the scope's
	// goroutines: what follows, and the pinned session's pin.
	mu sync.Mutex
	c  *session // the pinned connection; nil when none

	depth      int         // Do nesting
	doBoundary bool        // the outermost Do runs boundaries (see enterDo)
	atomic     int         // Atomic nesting
	x          *scopeExtra // nil until an Atomic runs

	queries int           // statements run, for Timing
	spent   time.Duration // time spent in them, for Timing

	// See cancel.go. armed is written under mu; interrupt reads it, and
	// everything else here is shared, under imu.
	imu       sync.Mutex
	stopWatch func() bool // ends the watch of the scope's context
	armed     net.Conn    // the pinned connection's socket, under quiet statements
	qctx      quietCtx    // what quiet returns
	tripped   bool        // interrupt set a deadline on armed
	canceled  bool        // the scope's context has ended

	async    bool
	ended    bool
	slot     bool          // holds a worker slot
	reserved bool          // the slot is held until End (Reserve)
	lost     bool          // the session was lost after statements ran on it (see observe)
	lostWhy  discardReason // why, where lost: the first cause
}

// scopeExtra is the part of a Scope that only Atomic uses, allocated on
// first use: a request's or a socket's scope that runs plain statements
// stays small, which every idle socket and every request pays for.
type scopeExtra struct {
	atomicCtx  context.Context
	begun      bool       // Atomic's transaction is open on the connection
	beginErr   error      // OnBegin's, in the running Atomic: its statements fail with it
	onCommit   []commitFn // OnCommit functions of the running Atomic
	doomed     error      // why the running Atomic's transaction must roll back: a savepoint could not end
	savepoints int        // savepoints made, for names
	due        []string   // savepoints of nested Atomic calls not sent yet, outermost first: they go before the first statement inside them (see sendSavepoints)
	unsent     []string   // savepoints that were due when user code was handed the connection (Rows.Conn): never to be sent (see handOutPinned)
	failed     bool       // a statement failed in the running Atomic (on another driver, COMMIT's tag is not seen: see endTx)
	lost       bool       // the running Atomic's session was lost, or a statement of it refused for a session lost before (see loseSession)
	endedUnder bool       // code the scope does not see ended the running Atomic's transaction (see txEndedUnder)
	gate       *beginGate // while Options.OnBegin runs in a transaction just begun (see waitGate)
}

// loseSession marks the scope's session lost (see observe) for why: its
// statements fail with ErrSessionLost until its boundary, and a running
// Atomic does not commit. Under s.mu.
func (s *Scope) loseSession(why discardReason) {
	if !s.lost {
		s.lost, s.lostWhy = true, why
	}
	if s.atomic > 0 {
		s.x.lost = true
	}
}

// connFailedError is an error of a session lost because its connection
// failed (the server ended it, the network), not for a cause of the
// unit's own (a panic, its context ending mid-statement):
// internal/scopes.ErrConnectionFailed is in it.
type connFailedError struct{ error }

func (e connFailedError) Unwrap() error      { return e.error }
func (connFailedError) Is(target error) bool { return target == scopes.ErrConnectionFailed }

// atomicTxOpen reports whether an Atomic runs and has begun its
// transaction.
func (s *Scope) atomicTxOpen() bool { return s.atomic > 0 && s.x.begun }

// txEndedUnder reports whether Atomic's transaction, begun, was ended
// under it by code the scope does not see: a COMMIT or ROLLBACK on the
// connection of Scope.Conn or Scope.Pgx (pgx's own transaction there),
// which the server says by its transaction status, idle, on pgx's
// driver (another driver's is not seen). Once seen it stays so until
// Atomic ends. Under s.mu, while no rows of the scope are open.
func (s *Scope) txEndedUnder() bool {
	return s.atomicTxOpen() && !s.x.lost && s.sawTxEnded()
}

// sawTxEnded is txEndedUnder for Atomic's transaction, begun and not
// lost (see endTx).
func (s *Scope) sawTxEnded() bool {
	if c := s.c; !s.x.endedUnder && c != nil && c.pc != nil && c.pin.open.Load() == 0 && !c.pin.inFn.Load() {
		// (Not read while the scope's rows, or Pgx's fn, drive the
		// connection.)
		st := c.state()
		s.x.endedUnder = st.tx == 'I' && !st.closed
	}
	return s.x.endedUnder
}

// newScope returns a new scope of p, made in ctx: its context carries it,
// its outer scopes are those ctx carries.
func (p *Pool) newScope(ctx context.Context) *Scope {
	s := &Scope{pool: p, outer: outerOf(ctx), txOuter: realOf(ctx)}
	s.ctx = scopeCtx{Context: ctx, s: s}
	return s
}

// Scope returns a child of ctx carrying a new scope of p, and the scope.
// Call [Scope.End] when the unit of work (request, socket) is over; until
// then [From] finds the scope in the returned context.
//
// A context may carry scopes of several pools (a primary and a replica):
// each has its own slots, connection and boundaries; [Pool.From] finds
// each, [From] the one made last.
func (p *Pool) Scope(ctx context.Context) (context.Context, *Scope) {
	s := p.newScope(ctx)
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
// The scope refuses use afterwards with ErrScopeEnded, and so does what
// it handed out ([Scope.Conn], [Scope.Pgx], the *sql.Tx of
// [Scope.BeginTx]). End is idempotent; it must not run while other
// goroutines use the scope.
func (s *Scope) End() {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended = true
	s.atomic = 0
	if s.x != nil {
		s.x.atomicCtx, s.x.begun = nil, false
	}
	if err := s.release(context.Background(), true); err != nil {
		// The connection was discarded; nobody is left to return this to.
		s.pool.logCleanup("dbctx: ending scope", err)
	}
	s.unwatch()
	s.freeSlot()
}

// Abort is End for a unit of work that ended abnormally (a panic): the
// connection, whose state is unknown, is discarded rather than given back.
func (s *Scope) Abort() {
	if s == nil {
		return
	}
	s.mu.Lock()
	if !s.ended && s.c != nil {
		s.unpin(discardPanic)
	}
	s.mu.Unlock()
	s.End()
}

// Timing returns how many statements the scope has run and the time spent
// in them, waiting for a slot and a connection included (a slot taken
// ahead by Reserve too), Atomic's COMMIT counted as one, a batch's
// queries each. It feeds the
// Server-Timing header of package middleware.
func (s *Scope) Timing() (queries int, spent time.Duration) {
	if s == nil {
		return 0, 0
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queries, s.spent
}

// account counts n statements that began at start. Under s.mu.
func (s *Scope) account(start time.Duration, n int) {
	s.queries += n
	s.spent += monotonic() - start
}

// epoch starts the monotonic clock of [monotonic].
var epoch = time.Now()

// monotonic is the time since epoch: one read of the monotonic clock,
// where time.Now reads the wall clock too. It times every statement.
func monotonic() time.Duration { return time.Since(epoch) }

// usable returns the error of a scope that cannot run statements now, or
// nil.
func (s *Scope) usable() error {
	switch {
	case s == nil:
		return ErrNoScope
	case s.async:
		return ErrAsyncContext
	case s.ended:
		return ErrScopeEnded
	case s.lost:
		return ErrSessionLost
	}
	return nil
}

// pinned returns the scope's connection, taking a slot and a connection
// first where it has none. Under s.mu.
func (s *Scope) pinned(ctx context.Context) (*session, error) {
	if s.c != nil && !s.lost {
		return s.c, nil
	}
	if err := s.usable(); err != nil {
		if s.lost {
			s.loseSession(s.lostWhy) // a statement of a running Atomic refused
		}
		return nil, err
	}
	if err := s.takeSlot(ctx); err != nil {
		return nil, err
	}
	var c *session
	var looked bool
	var err error
	var pn Pin
	if s.pool.opts.OnPin != nil {
		c, looked, pn, err = s.pool.connectObserved(ctx)
	} else {
		c, looked, err = s.pool.connect(ctx, nil)
	}
	if err != nil {
		if s.depth == 0 {
			s.freeSlot()
		}
		if s.pool.opts.OnPin != nil {
			s.pool.toldPin(ctx, pn)
		}
		return nil, err
	}
	s.c = c
	c.pin.unchecked = !looked
	if s.pool.opts.ConnMaxAge > 0 {
		c.pin.pinnedAt = monotonic()
	}
	if s.pool.opts.LeakTimeout > 0 {
		s.watchLeak(c)
	}
	if s.pool.opts.OnPin != nil {
		// Told once the connection is the scope's: OnPin may end the
		// goroutine (runtime.Goexit), and the scope's end gives it back.
		s.pool.toldPin(ctx, pn)
	}
	return c, nil
}

// Reserve takes a worker slot for the scope now, waiting as [Do] does,
// and holds it until [Scope.End], whatever the boundaries in between: for
// admission control at the start of a unit of work, so that overload is
// refused (ErrBusy) before any of it is done. It takes no connection.
func (s *Scope) Reserve(ctx context.Context) error {
	if s == nil {
		return ErrNoScope
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.async:
		return ErrAsyncContext
	case s.ended:
		return ErrScopeEnded
	}
	start := monotonic()
	if err := s.takeSlot(ctx); err != nil {
		return err
	}
	s.spent += monotonic() - start // a wait for a slot, counted as Timing says
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
