package dbctx

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"time"

	"github.com/dbscope/dbscope/internal/scopes"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Atomic runs fn in a transaction on the scope in ctx, the port of
// Django's transaction.atomic: the transaction commits when fn returns nil
// and rolls back when it returns an error or panics (the panic goes on
// after the rollback). Statements run through the scope inside fn are
// part of the transaction. The transaction begins lazily, with fn's first
// statement, in the same round trip: an fn that never touches the
// database takes no slot and no connection. A nested Atomic uses a
// savepoint, so its failure rolls back only its own work. Where the
// transaction is yet to begin, the savepoint too goes with the first
// statement inside it, so a nested fn that runs none sends nothing; once
// it has begun, or where user code holds a handle on the scope's
// connection that the scope does not see through (from [Scope.Conn],
// [Scope.Pgx] or [Scope.PrepareContext]), it goes at once: fn may run
// statements there. (Where fn takes the connection from rows open before
// the outer Atomic, with pgx.Rows.Conn, it can go neither then nor later,
// and should that nested Atomic fail, the outermost transaction rolls
// back whole.)
//
// Transaction control in SQL inside fn (COMMIT, ROLLBACK, BEGIN, END,
// ABORT, PREPARE TRANSACTION; SAVEPOINT, RELEASE and ROLLBACK TO are
// fine) is refused with [ErrInAtomic] before it is sent: what fn ran
// after it would not be in the transaction Atomic commits or rolls back.
// Where code the scope does not see ends the transaction (a COMMIT or
// ROLLBACK on the connection of [Scope.Conn] or [Scope.Pgx], pgx's own
// transaction there), on pgx's driver, the scope's statements after it
// are refused with ErrInAtomic, and Atomic returns it (joined to fn's
// error, where fn failed): what ran before that end was committed or
// rolled back there, whatever Atomic does. Another driver does not say:
// there the scope's statements after it run on their own, each with its
// settings.
//
// Atomic needs a sync scope: in an [Async] context call it inside [Do].
// Boundaries ([CloseOld]) inside fn do nothing. The error of a failed
// commit is returned, wrapped: the work did not happen; but where the
// connection failed after the COMMIT was sent, before its answer, the
// error is [ErrCommitUnknown]: PostgreSQL may have committed. fn's goroutines
// may run statements on the scope; nested Atomic calls belong on fn's
// goroutine. The COMMIT is sent with ctx: where ctx has ended by then (a
// request whose client left, a deadline), the transaction rolls back and
// Atomic returns ctx's error, OnCommit's functions unrun (also where fn
// ran no statement, and nothing was begun); so it does where
// the scope's boundary came while fn ran (ErrScopeEnded). Where ctx ends
// while the COMMIT runs, its answer is still read (on pgx's driver a
// cancel request goes to the server; on another, it is waited for, 5 s
// at most, then ErrCommitUnknown) and reported as it is. A nested
// Atomic whose ctx has ended by its end (a deadline of its own) rolls
// back to its savepoint and returns ctx's error, its OnCommit functions
// unrun, with or without a statement: the outer transaction goes on. Where the
// transaction's session is lost while fn runs (the server ended it, a
// statement's context ended mid-way, a [Do] inside fn panicked and its
// connection was discarded), fn's later statements and Atomic return
// [ErrSessionLost]: nothing of it commits.
func Atomic(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	s := From(ctx)
	if s == nil {
		return ErrNoScope
	}
	s.mu.Lock()
	nested, err := s.atomic > 0, s.usableForAtomic()
	s.mu.Unlock()
	switch {
	case err != nil:
		return err
	case nested:
		return s.savepoint(ctx, fn)
	}
	return s.atomicTx(ctx, fn)
}

func (s *Scope) usableForAtomic() error {
	switch {
	case s.async:
		return ErrAsyncContext
	case s.ended:
		return ErrScopeEnded
	}
	return nil
}

// errTxRowsOpen is an Atomic that ended while rows of a statement in its
// transaction were still open.
var errTxRowsOpen = fmt.Errorf("%w: the transaction cannot end, and is lost with its connection; the scope's statements fail until its boundary (close rows before Atomic's function returns)", errRowsOpen)

// errCommitRollback is a COMMIT the server answered ROLLBACK: the
// transaction had failed.
var errCommitRollback = scopes.ErrCommitRollback

func (s *Scope) atomicTx(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	outerRun := runOf(ctx)
	run := &atomicRun{s: s, outer: outerRun}
	ctx = context.WithValue(ctx, atomicRunKey{}, run)
	s.mu.Lock()
	if s.x == nil {
		s.x = new(scopeExtra)
	}
	x := s.x
	s.atomic, x.atomicCtx, x.begun, x.onCommit, x.beginErr, x.failed, x.lost, x.endedUnder, x.due, x.unsent = 1, ctx, false, nil, nil, false, false, false, nil, nil
	s.mu.Unlock()
	done := false
	defer func() {
		if !done {
			// fn panicked: roll back and let the panic go on.
			s.mu.Lock()
			x.onCommit = nil
			s.endTx(ctx, false)
			run.ended = runRolledBack
			s.mu.Unlock()
		}
	}()
	ferr := fn(ctx)
	done = true
	s.mu.Lock()
	s.disarm() // the end of a transaction runs with its own context
	if ferr != nil {
		x.onCommit = nil
		if rerr := s.endTx(ctx, false); errors.Is(rerr, errTxEndedUnder) {
			// Not rolled back: what ran before that end stands.
			ferr = join(ferr, rerr)
		}
		run.ended = runRolledBack
		s.mu.Unlock()
		return ferr
	}
	var on *pgx.Conn // the connection of the COMMIT (see whenSettled)
	if c := s.c; c != nil {
		on = c.px
	}
	if cerr := s.endTx(ctx, true); cerr != nil {
		fns := x.onCommit
		x.onCommit = nil
		run.ended = runRolledBack
		unknown := errors.Is(cerr, ErrCommitUnknown)
		if unknown {
			run.ended, run.on = runUnknown, on
		}
		s.mu.Unlock()
		if unknown {
			var later []func()
			for _, f := range fns {
				if g := s.pool.guardCommitted(f.unknown); g != nil {
					later = append(later, g)
				}
			}
			s.pool.whenSettled(ctx, on, later...)
			return cerr
		}
		return fmt.Errorf("dbctx: commit: %w", cerr)
	}
	fns := x.onCommit
	x.onCommit = nil
	run.ended = runCommitted
	s.mu.Unlock()
	for _, f := range fns {
		// Or at the commit of an Atomic of the scope this one is
		// nested in (another pool's).
		afterCommits(s.txOuter, outerRun, commitFn{ok: s.pool.guardCommitted(f.ok), unknown: s.pool.guardCommitted(f.unknown)})
	}
	return nil
}

// whenSettled runs fns, functions of a COMMIT whose outcome is unknown
// (commitFn.unknown), on the caller's goroutine (before Atomic returns,
// so that what the unit does next comes after them), once that COMMIT's
// backend, the one on's connection announced, has ended its transaction:
// it is gone, or idle. Until then the COMMIT may still be running on the
// server (waiting for a lock, a synchronous standby), its work not yet
// visible: a member told at once to reload would miss it. It asks on a
// connection of its own, made as on's was (the *sql.DB may have none to
// spare), again while the database cannot be reached (the network that
// failed), settleWait at most; not behind a pooler (the backend is the
// pooler's), on another driver (nil on), nor once the pool is closing or
// ctx, the caller's, has ended.
func (p *Pool) whenSettled(ctx context.Context, on *pgx.Conn, fns ...func()) {
	if len(fns) == 0 {
		return
	}
	if on != nil && !p.opts.TransactionPooling && !p.pooler.Load() {
		p.awaitSettled(ctx, on)
	}
	for _, f := range fns {
		f()
	}
}

// settleWait bounds how long whenSettled waits for a backend; settlePoll
// is how often it asks.
const (
	settleWait = 30 * time.Second
	settlePoll = 20 * time.Millisecond
)

func (p *Pool) awaitSettled(ctx context.Context, on *pgx.Conn) {
	// Not past the caller's giving up (ctx), nor the pool's Close.
	ctx, cancel := context.WithTimeout(ctx, settleWait)
	defer cancel()
	defer context.AfterFunc(p.closing, cancel)()
	cfg := on.Config()
	ask := fmt.Sprintf(`SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity
		WHERE pid = %d AND state IS DISTINCT FROM 'idle')`, on.PgConn().PID())
	tick := time.NewTicker(settlePoll)
	defer tick.Stop()
	var side *pgconn.PgConn
	defer func() {
		if side != nil {
			side.Close(context.Background())
		}
	}()
	for {
		if side == nil || side.IsClosed() {
			side, _ = pgconn.ConnectConfig(ctx, &cfg.Config)
		}
		if side != nil {
			res, err := side.Exec(ctx, ask).ReadAll()
			if err == nil && len(res) == 1 && len(res[0].Rows) == 1 && string(res[0].Rows[0][0]) == "f" {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// commitFn is a function registered to run at a commit (ok), and, for
// the module's own packages (see scopes.OnCommitOrUnknown), one to run
// where the commit's outcome is unknown (ErrCommitUnknown): groups tells
// members that a message may be missing.
type commitFn struct {
	ok, unknown func()
	run         *atomicRun // the run of the scope's own it was registered in, if any: see dropIn
}

// within reports whether r is sp or a run nested in it.
func (r *atomicRun) within(sp *atomicRun) bool {
	for ; r != nil; r = r.outer {
		if r == sp {
			return true
		}
	}
	return false
}

// dropIn drops from fns the functions registered in sp (a savepoint that
// rolled back) or in a run nested in it; those registered through the
// transaction's own context, or a sibling's, stay, wherever they stand.
func dropIn(fns []commitFn, sp *atomicRun) []commitFn {
	out := fns[:0]
	for _, f := range fns {
		if !f.run.within(sp) {
			out = append(out, f)
		}
	}
	clear(fns[len(out):])
	return out
}

// atomicRun is one Atomic of a scope (a transaction, or a nested one's
// savepoint), marked on the context its function gets: a function
// registered with OnCommit through that context once the Atomic has ended
// (from another goroutine, which waited for the scope while the COMMIT
// ran, or kept a nested Atomic's context) goes with its outcome, rather
// than run as if no Atomic had been open, or with the transaction around
// a savepoint rolled back.
type atomicRun struct {
	s     *Scope
	outer *atomicRun // the run ctx was made in before this one, if any
	ended int8       // 0 while open, then runCommitted (or released), runRolledBack or runUnknown; under s.mu
	on    *pgx.Conn  // runUnknown: the connection of the COMMIT (see whenSettled)
}

const (
	runCommitted = 1 + iota
	runRolledBack
	runUnknown // the COMMIT's outcome is unknown (ErrCommitUnknown)
)

type atomicRunKey struct{}

// runOf returns the innermost Atomic run ctx was made in, or nil.
func runOf(ctx context.Context) *atomicRun {
	r, _ := ctx.Value(atomicRunKey{}).(*atomicRun)
	return r
}

// endTx ends Atomic's transaction, if it began: COMMIT, or ROLLBACK. Under
// s.mu.
func (s *Scope) endTx(ctx context.Context, commit bool) error {
	x := s.x
	begun, doomed := x.begun, x.doomed
	s.atomic, x.atomicCtx, x.begun, x.doomed, x.due, x.unsent = 0, nil, false, nil, nil, nil
	c := s.c
	if commit && x.beginErr != nil {
		// Nothing of it ran (see beginAlone).
		return x.beginErr
	}
	if commit && s.ended {
		// The scope's boundary came while fn ran (its request timed out
		// around it, say), and rolled the transaction back.
		return ErrScopeEnded
	}
	if x.lost {
		// The transaction, if any, was lost with its connection (the
		// server ended the session, a context ended mid-statement, a
		// Do inside fn panicked), or a statement of fn refused for a
		// session lost before: nothing to commit or roll back, and the
		// scope's statements fail until its boundary.
		if commit {
			err := fmt.Errorf("%w: the transaction was lost with its connection", ErrSessionLost)
			if s.lostWhy == discardBroken {
				err = connFailedError{err}
			}
			return errors.Join(err, ctx.Err())
		}
		return nil
	}
	if !begun || c == nil {
		if commit && ctx.Err() != nil {
			// Nothing was sent, but the unit's context ended before its
			// commit, as it would be where a statement ran: its
			// OnCommit functions do not run.
			return ctx.Err()
		}
		return nil
	}
	// Looked at before the pin is touched: the Close of a result handed
	// out records what its round trip left there, on the goroutine that
	// closes it, and counts the result closed only after (see opened).
	if c.pin.open.Load() > 0 {
		// Rows of a statement in the transaction are still open: neither
		// COMMIT nor ROLLBACK can be sent. The transaction is lost (later
		// statements would run in it, to be rolled back with it at the
		// boundary): the connection goes, and the scope's statements
		// fail until the boundary.
		s.unpin(discardBroken)
		s.loseSession(discardTx) // the unit's doing: no connection failed
		s.pool.opts.Logger.Warn("dbctx: Atomic ended with rows of a statement in its transaction still open; the transaction is lost with its connection, and the scope's statements fail until its boundary", "commit", commit)
		return errTxRowsOpen
	}
	endedUnder := s.sawTxEnded()
	c.pin.txOver()
	// Its COMMIT or ROLLBACK ends a transaction begun in SQL before it
	// too (its BEGIN was a no-op there).
	c.pin.seen &^= kindBegin
	if endedUnder {
		// Neither COMMIT nor ROLLBACK would end what Atomic began (the
		// server would warn, and commit or roll back the transaction,
		// if any, the user's code began since).
		if c.pc != nil && c.state().tx != 'I' {
			s.rollbackAtomic(ctx)
		}
		return errTxEndedUnder
	}
	if commit && doomed != nil {
		return errors.Join(fmt.Errorf("dbctx: rolled back: a nested Atomic could not end its savepoint: %w", doomed), s.rollbackAtomic(ctx))
	}
	if commit && ctx.Err() != nil {
		// Nothing would be sent (another driver would say the connection
		// is bad): rolled back, and the context's news.
		return errors.Join(ctx.Err(), s.rollbackAtomic(ctx)) // Atomic says "commit"
	}
	if commit && c.pc == nil && x.failed && s.txAborted(ctx, c) {
		// Another driver does not say that PostgreSQL answered COMMIT
		// with ROLLBACK: where a statement failed, the transaction is
		// asked first.
		return errors.Join(errCommitRollback, s.rollbackAtomic(ctx))
	}
	if commit {
		var tag string
		start := monotonic()
		err := s.runCommit(ctx, c, &tag)
		s.account(start, 1)
		switch {
		case err != nil:
			s.observe(ctx, err, false)
			if s.c != nil && s.c.pc != nil && s.c.state().tx != 'I' {
				// Not sent (its context ended): roll back.
				s.rollbackAtomic(ctx)
			}
			return err
		case tag == "ROLLBACK":
			return errCommitRollback
		}
		return nil
	}
	return s.rollbackAtomic(ctx)
}

// errTxEndedUnder is the error of an Atomic whose transaction code the
// scope does not see ended (see Scope.txEndedUnder), and of the scope's
// statements in it after that end.
var errTxEndedUnder = fmt.Errorf("%w: its transaction was ended by code the scope does not see (COMMIT or ROLLBACK on the connection of Scope.Conn or Scope.Pgx, pgx's own transaction there): what ran in it before then was committed or rolled back at that end, not at Atomic's; the scope's statements after it are refused until Atomic returns", ErrInAtomic)

// commitUnknown reports whether err, a COMMIT's on a connection open
// when it was sent, leaves its outcome unknown: the connection failed
// before the server's answer, which a refusal or a FATAL would have been,
// was read.
func commitUnknown(err error) bool {
	var pe *pgconn.PgError
	switch {
	case err == context.Canceled, err == context.DeadlineExceeded:
		return false // not sent: its context ended first (commitOn)
	case errors.As(err, &pe):
		// Answered, by the server; not by PgBouncer saying its server
		// connection failed under the COMMIT (a backend terminated
		// while its commit waited for a synchronous standby, committed
		// locally): that is the connection failing before the server's
		// answer.
		return poolerLostServer(pe)
	}
	// pgconn's word (SafeToRetry) is no help here: a connection that
	// fails while its answer is awaited is reported as "conn closed",
	// safe to retry, and so by database/sql as driver.ErrBadConn.
	return true
}

// poolerLostServer reports whether pe is PgBouncer's word that the server
// connection of the client's statement failed while it ran ("server conn
// crashed?", 08P01): the server's answer, if any, was not read.
func poolerLostServer(pe *pgconn.PgError) bool {
	return pe.Code == "08P01" && pe.Message == "server conn crashed?"
}

// txAborted reports whether c's transaction is aborted (SQLSTATE 25P02
// for a statement in it): on another driver, after a statement of the
// transaction failed and fn went on (a nested Atomic's rollback to its
// savepoint makes it usable again).
func (s *Scope) txAborted(ctx context.Context, c *session) bool {
	_, err := c.pin.conn.ExecContext(ctx, "SELECT 1")
	return sqlState(err) == "25P02"
}

func (s *Scope) rollbackAtomic(ctx context.Context) error {
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if err := s.runTxEnd(ctx, s.c, "ROLLBACK", nil, nil); err != nil {
		s.observe(ctx, err, false)
		return err
	}
	return nil
}

// runCommit sends COMMIT on c. Where ctx can end, on pgx's connection,
// its end does not cut the connection under the COMMIT, which would leave
// its outcome unknown (PostgreSQL may have committed, its answer not yet
// read: work reported lost that was done): a cancel request goes to the
// server instead, and the answer is read. A COMMIT the server had not
// finished fails (57014) and rolls back; one it had finished stands, and
// is reported so. Where no answer comes within cleanupTimeout of the
// cancel, the connection is cut as before. On another driver no cancel
// request can be sent: the answer is waited for (commitUncut). Where the
// connection fails after the COMMIT was sent, before its answer, the
// error is ErrCommitUnknown.
func (s *Scope) runCommit(ctx context.Context, c *session, tag *string) error {
	sent := true
	err := s.commitOn(ctx, c, tag, &sent)
	if err != nil && sent && commitUnknown(err) {
		s.pool.c.outcomesUnknown.Add(1)
		return fmt.Errorf("%w: %w", ErrCommitUnknown, err)
	}
	return err
}

// errNotSent is a COMMIT not sent: the connection was closed, or its
// peer had closed it, before (see runTxEnd).
var errNotSent error = connFailedError{fmt.Errorf("%w: the connection was closed before COMMIT was sent; the transaction is lost with it", ErrSessionLost)}

// commitOn is runCommit's COMMIT; sent is cleared where it was not sent.
func (s *Scope) commitOn(ctx context.Context, c *session, tag *string, sent *bool) error {
	if ctx.Done() == nil {
		return s.runTxEnd(ctx, c, "COMMIT", tag, sent)
	}
	if err := ctx.Err(); err != nil {
		return err // not sent (see endTx)
	}
	if c.px == nil {
		return s.commitUncut(ctx, c, tag, sent)
	}
	pc := c.pc
	answered, watched := make(chan struct{}), make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(watched)
		rctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		pc.CancelRequest(rctx)
		cancel()
		t := time.NewTimer(cleanupTimeout)
		defer t.Stop()
		select {
		case <-answered:
		case <-t.C:
			pc.Conn().SetDeadline(time.Unix(1, 0))
		}
	})
	err := s.runTxEnd(context.WithoutCancel(ctx), c, "COMMIT", tag, sent)
	close(answered)
	if !stop() {
		// The cancel request was sent: it is over before the connection
		// runs anything else (one that came late, while the server
		// waited for a command, it ignores).
		<-watched
		if err != nil {
			err = fmt.Errorf("%w: %w", ctx.Err(), err)
		}
	}
	return err
}

// commitUncut is commitOn on another driver, where ctx's end would cut
// the connection under the COMMIT (database/sql and the driver then say
// ctx's error, the transaction perhaps committed) and no cancel request
// can be sent: the COMMIT runs to its answer, cleanupTimeout at most past
// ctx's end, after which the connection is cut and the outcome unknown
// (errCommitCut).
func (s *Scope) commitUncut(ctx context.Context, c *session, tag *string, sent *bool) error {
	cctx, cut := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cut(nil)
	stop := context.AfterFunc(ctx, func() {
		t := time.NewTimer(cleanupTimeout)
		defer t.Stop()
		select {
		case <-cctx.Done():
		case <-t.C:
			cut(errCommitCut)
		}
	})
	defer stop()
	err := s.runTxEnd(cctx, c, "COMMIT", tag, sent)
	if err != nil && context.Cause(cctx) == errCommitCut {
		err = fmt.Errorf("%w: %w", errCommitCut, err)
	}
	return err
}

// errCommitCut is a COMMIT on another driver whose answer did not come
// within cleanupTimeout of its context's end: the connection was cut
// under it (commitUnknown).
var errCommitCut = errors.New("dbctx: no answer to COMMIT within the cleanup timeout after its context ended; connection cut")

// runTxEnd runs COMMIT or ROLLBACK on c, and keeps its command tag.
// Where sent is given (a COMMIT, on pgx's connection), a connection found
// closed, by pgconn or by its peer, is not sent anything: sent is cleared,
// and the error is errNotSent.
func (s *Scope) runTxEnd(ctx context.Context, c *session, q string, tag *string, sent *bool) error {
	if c.px == nil {
		_, err := c.pin.conn.ExecContext(ctx, q)
		return err
	}
	return withLock(c.pin.conn, func() error {
		if sent != nil && (c.pc.IsClosed() || c.dead()) {
			*sent = false
			return errNotSent
		}
		t, err := c.px.Exec(ctx, q)
		if tag != nil {
			*tag = t.String()
		}
		return err
	})
}

// OnCommit runs fn once the transaction of the [Atomic] that ctx is in has
// committed, the port of Django's transaction.on_commit: for side effects
// others must only see for committed work (pushing a message to sockets,
// sending an email). If the transaction rolls back, fn never runs; a
// function registered in a nested Atomic that rolls back is dropped with
// it. Outside Atomic fn runs at once. fn runs on the goroutine that
// committed, after the commit, before Atomic returns; a panic in it is
// recovered and logged at Error with its stack (the work is committed:
// the functions after it run, and Atomic returns nil).
//
// With scopes of several pools in one unit of work, fn waits for the
// commit of every Atomic open in ctx's scope and in the scopes it is
// nested in: a function registered in a Do of one pool inside an Atomic
// of another runs once that Atomic commits, never if it rolls back.
func OnCommit(ctx context.Context, fn func()) {
	afterCommits(realOf(ctx), runOf(ctx), commitFn{ok: fn})
}

// onCommitOrUnknown is OnCommit with unknown run instead of fn where the
// commit's outcome is unknown (see scopes.OnCommitOrUnknown).
func onCommitOrUnknown(ctx context.Context, fn, unknown func()) {
	afterCommits(realOf(ctx), runOf(ctx), commitFn{ok: fn, unknown: unknown})
}

// afterCommits registers fn with the innermost Atomic open in s or a
// scope s is nested in (whose commit passes it on outwards: see
// atomicTx), or runs it where none is. run is the Atomic the caller's
// context was made in, if any: where it has ended, fn goes with its
// outcome, dropped on a rollback.
func afterCommits(s *Scope, run *atomicRun, fn commitFn) {
	for ; s != nil; s = s.txOuter {
		s.mu.Lock()
		// The runs of s that ctx was made in, innermost first: where one
		// has ended, fn goes with its outcome.
		ended := false
		for run != nil && run.s == s && run.ended != 0 {
			switch run.ended {
			case runRolledBack:
				s.mu.Unlock()
				return
			case runUnknown:
				on := run.on
				s.mu.Unlock()
				if fn.unknown != nil {
					s.pool.whenSettled(context.Background(), on, fn.unknown)
				}
				return
			}
			// Released, or committed: the run around it decides, or,
			// past the transaction's, the scopes around s.
			ended, run = true, run.outer
		}
		if own := run != nil && run.s == s; own || !ended && s.atomic > 0 {
			fn.run = nil
			if own {
				fn.run = run
			}
			s.x.onCommit = append(s.x.onCommit, fn)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
	fn.ok()
}

// guardCommitted returns fn, an OnCommit function, that recovers its own
// panic: the work is committed, and the functions after it still run;
// the panic is logged at Error, with its stack. A nil fn stays nil (a
// commitFn without unknown).
func (p *Pool) guardCommitted(fn func()) func() {
	if fn == nil {
		return nil
	}
	return func() {
		defer func() {
			if r := recover(); r != nil {
				p.opts.Logger.Error("dbctx: an OnCommit function panicked after the commit", "panic", r, "stack", string(debug.Stack()))
			}
		}()
		fn()
	}
}

// atomicOutside reports whether a scope that ctx's innermost scope is
// nested in has an Atomic open (see scopes.AtomicOutside).
func atomicOutside(ctx context.Context) bool {
	s := realOf(ctx)
	if s == nil {
		return false
	}
	for o := s.txOuter; o != nil; o = o.txOuter {
		o.mu.Lock()
		open := o.atomic > 0
		o.mu.Unlock()
		if open {
			return true
		}
	}
	return false
}

func init() {
	scopes.AtomicOutside = atomicOutside
	scopes.OnCommitOrUnknown = onCommitOrUnknown
}

// beginAlone begins a pending Atomic's transaction in a round trip of its
// own, then runs Options.OnBegin in it, which needs the scope unlocked,
// behind g (see waitGate). Its failure is Atomic's: every statement of it
// fails with it.
func (s *Scope) beginAlone(ctx context.Context, g *beginGate) {
	s.mu.Lock()
	if s.atomic == 0 || s.x.begun || s.x.beginErr != nil {
		// The Atomic ended while the scope was unlocked (its fn returned
		// on another goroutine), or its transaction was begun: nothing
		// to begin.
		s.mu.Unlock()
		return
	}
	st := stmt{query: "BEGIN", how: alone}
	err := s.execLocked(ctx, &st, func(context.Context, *session, *prefix) error { return nil })
	x := s.x
	actx := x.atomicCtx
	s.mu.Unlock()
	if err == nil {
		// OnBegin's statements are the transaction's, outside the
		// savepoints due (a nested Atomic's first statement began it):
		// those go after it.
		s.mu.Lock()
		due := x.due
		x.due = nil
		s.mu.Unlock()
		err = s.onBegin(g.through(actx))
		s.mu.Lock()
		x.due = due
		s.mu.Unlock()
	}
	if err != nil {
		s.mu.Lock()
		if x.begun {
			// Nothing of the transaction runs without what OnBegin
			// sets: it is rolled back now, and the Atomic's statements,
			// and its commit, fail.
			s.rollbackAtomic(actx)
			x.begun = false
		}
		x.beginErr = err
		s.mu.Unlock()
	}
}

// beginGate holds the statements of a scope's goroutines while
// Options.OnBegin runs, on one of them, in the transaction it has just
// begun (its statements need the scope unlocked): they go after what it
// sets, not before, in the transaction already begun. OnBegin's own
// statements pass: those of its own goroutine (owner), whatever their
// context, and those whose contexts come from the one it gets (through),
// on goroutines it starts.
type beginGate struct {
	done  chan struct{}
	owner uint64 // the goroutine that runs OnBegin (see goid)
}

type beginGateKey struct{}

// through returns ctx marked for g: statements run with it pass g. A nil
// g (no OnBegin) returns ctx.
func (g *beginGate) through(ctx context.Context) context.Context {
	if g == nil {
		return ctx
	}
	return context.WithValue(ctx, beginGateKey{}, g)
}

// openGate opens a gate for the OnBegin about to run. Under s.mu.
func (s *Scope) openGate() *beginGate {
	if s.x == nil {
		s.x = new(scopeExtra)
	}
	g := &beginGate{done: make(chan struct{}), owner: goid()}
	s.x.gate = g
	return g
}

// goid returns the current goroutine's id, read from the first line of
// its stack ("goroutine 7 [running]:"); 0 where it cannot be read. Only
// where a transaction begins with Options.OnBegin set, and where a
// statement meets the gate.
func goid() uint64 {
	var buf [64]byte
	b := buf[:runtime.Stack(buf[:], false)]
	b, ok := bytes.CutPrefix(b, []byte("goroutine "))
	if !ok {
		return 0
	}
	var id uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			break
		}
		id = id*10 + uint64(c-'0')
	}
	return id
}

// closeGate lets the statements held by g go; ran false says OnBegin did
// not return (its goroutine ended in it): nothing of the transaction runs
// without what it sets. Not under s.mu.
func (s *Scope) closeGate(g *beginGate, ran bool) {
	s.mu.Lock()
	if s.x.gate == g {
		s.x.gate = nil
		if !ran && s.x.beginErr == nil && s.atomic > 0 {
			s.x.beginErr = errOnBeginGone
		}
	}
	s.mu.Unlock()
	close(g.done)
}

var errOnBeginGone = errors.New("dbctx: OnBegin did not return")

// waitGate waits while OnBegin runs on another goroutine (see beginGate),
// or until ctx ends. Under s.mu, let go while it waits.
func (s *Scope) waitGate(ctx context.Context) error {
	for s.x != nil && s.x.gate != nil {
		g := s.x.gate
		if ctx.Value(beginGateKey{}) == g || (g.owner != 0 && goid() == g.owner) {
			return nil // OnBegin's own
		}
		s.mu.Unlock()
		select {
		case <-g.done:
		case <-ctx.Done():
		}
		s.mu.Lock()
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return nil
}

func (s *Scope) savepoint(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	s.mu.Lock()
	// A name of its own, not its depth: where nested Atomic calls run
	// on several goroutines at once (which they should not), one's
	// RELEASE or ROLLBACK TO then fails, and dooms the transaction,
	// rather than end another's savepoint of the same name.
	s.x.savepoints++
	name := "dbctx_sp_" + strconv.Itoa(s.x.savepoints)
	// Where the transaction is yet to begin, sent with the first
	// statement inside it, as Atomic's BEGIN is: a function that runs
	// none sends nothing, and takes no slot. Once it has begun (the
	// connection is the transaction's already), or where user code holds
	// a handle that runs statements on the connection unseen (Conn, Pgx,
	// PrepareContext's *sql.Stmt), fn may run its statements there: the
	// savepoint goes now. (So, too, a nested Atomic on another goroutine
	// while OnBegin runs, whose savepoint must not wait among those due.)
	eager := s.x.begun || s.c != nil && s.c.pin.blind()
	if !eager {
		s.x.due = append(s.x.due, name)
	}
	s.mu.Unlock()
	if eager {
		if err := s.txStatement(ctx, "SAVEPOINT "+name, 0); err != nil {
			return err
		}
	}
	s.mu.Lock()
	run := &atomicRun{s: s, outer: runOf(ctx)}
	s.atomic++
	x := s.x
	s.mu.Unlock()
	// sent reports whether the savepoint was sent, and forgets it if not:
	// nothing is to be released or rolled back. blind says that it was
	// still due when user code was handed the connection (see
	// handOutPinned): what ran inside it cannot be rolled back alone.
	sent := func() (sent, blind bool) {
		if i := slices.Index(x.due, name); i >= 0 {
			x.due = slices.Delete(x.due, i, i+1)
			return false, false
		}
		if i := slices.Index(x.unsent, name); i >= 0 {
			x.unsent = slices.Delete(x.unsent, i, i+1)
			return false, true
		}
		return true, false
	}
	// failedBlind dooms the transaction where fn failed, its savepoint
	// never sent, after user code was handed the connection: its work,
	// if any, cannot be rolled back alone, and must not commit.
	failedBlind := func(why any) {
		s.doom(fmt.Errorf("dbctx: a nested Atomic failed whose savepoint was not sent before its connection was handed out (Rows.Conn): %v", why))
	}
	done := false
	defer func() {
		s.mu.Lock()
		s.atomic--
		switch {
		case !done: // fn panicked
			x.onCommit = dropIn(x.onCommit, run)
			run.ended = runRolledBack
		case run.ended == 0:
			run.ended = runCommitted // released (or its release failed: the transaction is doomed)
		}
		var rollBack, blind bool
		if !done {
			rollBack, blind = sent()
		}
		s.mu.Unlock()
		if rollBack {
			s.rollbackTo(ctx, name)
		}
		if blind {
			failedBlind("it panicked")
		}
	}()
	ferr := fn(context.WithValue(ctx, atomicRunKey{}, run))
	done = true
	if ferr == nil && ctx.Err() != nil {
		// As the outermost Atomic's COMMIT: ctx ended by its end (a
		// deadline of its own), so its work rolls back, to its
		// savepoint, and its OnCommit functions do not run, whether or
		// not fn ran a statement. Its RELEASE, sent with ctx, would
		// fail, and doom the outer transaction.
		ferr = ctx.Err()
	}
	s.mu.Lock()
	wasSent, blind := sent()
	if ferr != nil {
		x.onCommit = dropIn(x.onCommit, run)
		run.ended = runRolledBack
	}
	s.mu.Unlock()
	switch {
	case blind && ferr != nil:
		failedBlind(ferr)
		return ferr
	case !wasSent:
		return ferr
	case ferr != nil:
		s.rollbackTo(ctx, name)
		return ferr
	}
	if err := s.txStatement(ctx, "RELEASE SAVEPOINT "+name, 0); err != nil {
		if sqlState(err) == "25P02" {
			// A statement of fn failed, and fn returned nil: the
			// transaction is aborted, nothing of it commits, as a
			// COMMIT answered ROLLBACK says (middleware.Atomic mounted
			// twice sends a handler's 4xx then).
			err = fmt.Errorf("%w: %w", errCommitRollback, err)
		}
		s.doom(err)
		return err
	}
	return nil
}

// sendSavepoints sends the savepoints of the nested Atomic calls a
// statement is about to run in, before it: each in its own statement,
// the first with Atomic's BEGIN where the transaction is yet to begin.
// One that fails stays due. Under s.mu.
func (s *Scope) sendSavepoints(ctx context.Context) error {
	x := s.x
	for len(x.due) > 0 {
		st := stmt{query: "SAVEPOINT " + x.due[0], how: notQuiet}
		if err := s.execLocked(ctx, &st, txRunner(s, st.query)); err != nil {
			return err
		}
		x.due = x.due[1:]
		s.queries++ // a statement of Timing's, as RELEASE is; its time is exec's
	}
	return nil
}

// txStatement runs a transaction statement of Atomic's own through the
// scope's path: the first of an Atomic begins it, in the same round trip.
// kind is what it does that the scope must know of.
func (s *Scope) txStatement(ctx context.Context, q string, kind queryKind) error {
	st := stmt{query: q, kind: kind, how: notQuiet}
	return s.exec(ctx, &st, txRunner(s, q))
}

// txRunner runs q, a transaction statement of Atomic's own, on s's
// connection.
func txRunner(s *Scope, q string) runner {
	return func(ctx context.Context, c *session, p *prefix) error {
		if c.px == nil {
			_, err := c.pin.conn.ExecContext(ctx, q)
			return err
		}
		return withLock(c.pin.conn, func() error {
			_, err := s.pgxExec(ctx, c, p, q, nil)
			return err
		})
	}
}

func (s *Scope) rollbackTo(ctx context.Context, name string) {
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	// The outer transaction is lost with the connection if this fails;
	// its commit will fail and say so.
	// It puts back the settings the savepoint saw, as SET LOCAL would
	// change them: they are applied again.
	err := s.txStatement(ctx, "ROLLBACK TO SAVEPOINT "+name, kindTxSet)
	if err != nil {
		s.doom(err)
		return
	}
	s.txStatement(ctx, "RELEASE SAVEPOINT "+name, 0)
}

// doom marks the running Atomic's transaction for rollback: a nested
// Atomic's savepoint could not end (rows of a statement in it still open,
// say), so its work is in the transaction, and must not commit with it.
func (s *Scope) doom(err error) {
	s.mu.Lock()
	if s.x.doomed == nil {
		s.x.doomed = err
	}
	s.mu.Unlock()
}
