package dbctx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// CloseOld is the boundary check of the scopes in ctx, the port of
// Django's close_old_connections: a pinned connection that is unusable
// (closed, killed by the server, a connection-level error seen, a
// transaction left open that cannot be rolled back, a panic while in use,
// handed to user code as itself) is discarded; one that is obsolete
// (pinned longer than [Options.ConnMaxAge]; with 0, always) is given back
// after any open transaction is rolled back and [Options.OnRelease] run,
// its session reset first by its next user when dirty. A scope with no
// connection frees its slot.
//
// As Django's covers every database alias, CloseOld covers the innermost
// scope of every pool ctx carries (see [Pool.CloseOld] for one). Call it
// where a long-lived unit of work wakes up (a consumer woken by an
// event); [Do] and the middleware call it for you. Inside [Atomic] it
// does nothing to that scope. It returns the errors of the cleanups that
// failed (those connections are discarded), or nil. A ctx without a scope
// is a no-op.
func CloseOld(ctx context.Context) error {
	var errs []error
	for s := range visible(ctx) {
		if err := s.closeOld(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// CloseOld is [CloseOld] for p's scope in ctx alone.
func (p *Pool) CloseOld(ctx context.Context) error { return p.From(ctx).closeOld(ctx) }

func (s *Scope) closeOld(ctx context.Context) error {
	if s == nil || s.async {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.atomic > 0 {
		return nil
	}
	if s.c != nil && s.c.pin.inFn.Load() {
		// Inside Scope.Pgx's fn, which holds the connection: its
		// boundary would wait for fn, which waits for it.
		return errInPgxFn
	}
	err := s.release(ctx, false)
	if s.depth == 0 {
		s.freeIdleSlot()
	}
	return err
}

// visible yields the scopes of ctx that its code reaches: the innermost
// of each pool, up to a context that refuses direct use (Async).
func visible(ctx context.Context) func(yield func(*Scope) bool) {
	return func(yield func(*Scope) bool) {
		s := From(ctx)
		if s == nil || s.async {
			return
		}
		if !yield(s) {
			return
		}
		for o := s.outer; o != nil; o = o.outer {
			if !shadowed(s, o) && !yield(o) {
				return
			}
		}
	}
}

// shadowed reports whether a scope of o's pool comes before o in the
// chain from s: then o is not the one its pool finds.
func shadowed(s, o *Scope) bool {
	for c := s; c != o; c = c.outer {
		if c.pool == o.pool {
			return true
		}
	}
	return false
}

// release runs a boundary, under s.mu. With final set (the scope's end)
// the connection is always given back or discarded. The slot is the
// caller's business.
func (s *Scope) release(ctx context.Context, final bool) error {
	s.lost = false // a new unit of work starts on a fresh session
	if s.c == nil {
		return nil
	}
	return s.check(ctx, final)
}

func (s *Scope) check(ctx context.Context, final bool) error {
	p, c := s.pool, s.c
	s.closeRows()
	var st connState // none of pgconn's where the driver is another
	if c.pc != nil {
		st = c.state()
	}
	switch {
	case st.busy:
		// Rows of the raw connection, or of a *sql.Tx, left open.
		if len(c.pin.txs) > 0 {
			s.pool.opts.Logger.Warn("dbctx: a result was left open at a boundary (rows of a transaction of BeginTx never closed); transaction ended, connection discarded")
		} else {
			s.pool.opts.Logger.Warn("dbctx: a result was left open at a boundary (rows of the raw connection never closed); connection discarded")
		}
		s.abandon(discardBroken)
		return nil
	case c.pin.bad:
		s.unpin(c.pin.badWhy)
		return nil
	case st.closed:
		why := discardBroken
		if ctx.Err() != nil {
			why = discardCanceled
		}
		s.unpin(why)
		return nil
	}
	age := p.opts.ConnMaxAge
	obsolete := final || age == 0 || (age > 0 && monotonic()-c.pin.pinnedAt >= age)
	if c.pin.handedOut && obsolete {
		// User code may keep what it was handed: it must fail from
		// now on, not reach the connection's next user.
		s.abandon(discardRaw)
		return nil
	}
	// From here on the boundary runs statements of its own (rollback,
	// OnRelease) and then gives the connection back.
	s.disarm()
	if err := s.rollback(ctx); err == errTxEnding {
		s.unpin(discardTx)
		return nil
	} else if err != nil {
		s.unpin(discardTx)
		return err
	}
	if !obsolete {
		// Kept pinned for the next unit of work, which may come much
		// later: one killed while idle in between is replaced now, since
		// nothing run on it later could be retried.
		if c.dead() {
			p.sawDeath()
			s.unpin(discardDead)
		}
		return nil
	}
	return s.giveBack(ctx)
}

// rollback ends every transaction still open on the pinned connection.
func (s *Scope) rollback(ctx context.Context) error {
	c := s.c
	var errs []error
	ended := false // a *sql.Tx ended elsewhere, or is ending
	for _, t := range c.pin.txs {
		if err := t.tx.Rollback(); err == nil {
			s.pool.c.rolledBack.Add(1)
		} else if errors.Is(err, sql.ErrTxDone) {
			ended = true
		} else {
			errs = append(errs, err)
		}
	}
	// Read while the transactions are still known (see shared): under
	// the connection's lock, which a Commit of one still under way on
	// another goroutine holds (its Rollback here said ErrTxDone).
	open := c.pc != nil && c.state().tx != 'I' || c.pc == nil && c.inRawTx()
	if open && ended && c.pc != nil {
		// A *sql.Tx ended on another goroutine, its transaction still
		// open: database/sql's Commit (or Rollback) is under way, not
		// yet sent (it waits for a statement of the *sql.Tx to end).
		// Rolled back here, that COMMIT would run in no transaction and
		// report success, or in the next scope's. The connection is
		// discarded instead: database/sql closes it once the *sql.Tx
		// has ended, which waits for the Commit, sent as it was meant.
		c.pin.forgetTxs()
		return errTxEnding
	}
	if c.px == nil && len(c.pin.txs) > 0 {
		// Settings applied at session level in them (prefixBlind) went
		// with a rollback.
		c.applied = unknownSettings(c.applied, nil)
	}
	c.pin.forgetTxs()
	if len(errs) > 0 {
		return fmt.Errorf("dbctx: rolling back a transaction left open: %w", errors.Join(errs...))
	}
	if open {
		// Begun in raw SQL, or on the raw connection.
		ctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if err := s.execInternal(ctx, c, "ROLLBACK"); err != nil {
			return fmt.Errorf("dbctx: rolling back a transaction left open: %w", err)
		}
		s.pool.c.rolledBack.Add(1)
	}
	c.pin.seen &^= kindBegin
	c.pin.txOver()
	return nil
}

// errTxEnding is rollback's word that a *sql.Tx is ending on another
// goroutine: the connection is discarded, not rolled back.
var errTxEnding = errors.New("dbctx: a transaction of BeginTx is ending on another goroutine")

// execInternal runs a statement of dbscope's own on c: no prefix, no
// classification.
func (s *Scope) execInternal(ctx context.Context, c *session, query string) error {
	if c.px == nil {
		_, err := c.pin.conn.ExecContext(ctx, query)
		return err
	}
	return withLock(c.pin.conn, func() error {
		_, err := c.px.Exec(ctx, query)
		return err
	})
}

// giveBack cleans the session and returns the connection: kept for the
// next scope (keep.go), else to the *sql.DB. check has disarmed it.
func (s *Scope) giveBack(ctx context.Context) error {
	p, c := s.pool, s.c
	s.closeStmts()
	if c.pin.seen&kindPoison != 0 || c.pc != nil && c.pc.ParameterStatus(paramEncoding) != c.enc {
		// Or a client_encoding other than the one it began with (pgx's
		// UTF8): pgx's simple protocol refuses to send anything under
		// another, the reset included.
		s.unpin(discardUnresettable)
		return nil
	}
	tp := p.opts.TransactionPooling
	if c.px == nil && c.pin.seen&kindSeq != 0 {
		c.pin.see(kindState) // the lighter reset is pgx's only
	}
	if !tp && !c.dirty() && c.changed() {
		// Something the scope ran changed the session user without the
		// classifier seeing it: a view's or an operator's code, say.
		c.pin.see(kindState | kindCode)
	}
	if p.opts.OnRelease != nil {
		ctx, cancel := cleanupCtx(ctx)
		err := callHook("OnRelease", func() error { return p.opts.OnRelease(ctx, c.pin.conn) }, nil)
		cancel()
		if err != nil {
			s.unpin(discardHook)
			return fmt.Errorf("dbctx: OnRelease: %w", err)
		}
		c.pin.see(kindState | kindCode) // what it ran is not seen
	}
	if !tp && c.px != nil && c.pin.seen&kindResolve == 0 && c.dirty() && p.opts.OnAcquire == nil && c.readChanged() {
		// Code the classifier does not see changed how statements are
		// read (see parseReported): those prepared under it go too. (Not
		// with OnAcquire, which may set them for every acquire: as a
		// declared setting, its caveat is documented there.)
		c.pin.see(kindResolve)
	}
	if !tp && c.px != nil && c.pin.seen&kindResolve != 0 {
		c.dropDue = false // done here
		if err := p.dropStatements(ctx, c); err != nil {
			s.unpin(discardReset)
			return fmt.Errorf("dbctx: dropping the statements prepared under the scope's search_path or settings: %w", err)
		}
	}
	// Behind transaction pooling a reset would reach whichever server
	// connection the pooler picks; what could leak was refused (see
	// Scope.exec).
	if !tp && (c.dirty() || p.opts.ResetAlways) {
		sweep := c.pin.seen&kindCode != 0 || p.opts.ResetAlways
		if c.px != nil {
			// Owed by the connection's next user, in its first round
			// trip (prefix.go), or before it goes back to the *sql.DB.
			c.resetDue, c.seqOnly = true, false
			c.sweepDue = c.sweepDue || sweep
			c.apart = c.apart || c.pin.codeApart || p.opts.ResetAlways
			// A statement not yet described is described after the
			// reset, not before it, under what the scope set.
			c.setDue = c.setDue || c.pin.seen&(kindSetting|kindResolve) != 0
		} else {
			ctx, cancel := cleanupCtx(ctx)
			err := p.resetOther(ctx, c, sweep)
			cancel()
			if err != nil {
				s.unpin(discardReset)
				return fmt.Errorf("dbctx: resetting session: %w", err)
			}
		}
	}
	if !tp && !c.dirty() && c.pin.seen&kindSeq != 0 {
		// Writes that left only sequence state (Options.PlainWrites): a
		// lighter reset, unless a whole one is owed already.
		c.seqOnly = !c.resetDue || c.seqOnly
		c.resetDue = true
	}
	c.released = monotonic()
	p.c.givenBack.Add(1)
	s.forget() // before the next scope may take it from the keep
	if !p.keep(c) {
		p.giveToDB(c)
	}
	return nil
}

// dropStatements drops every statement prepared on c, pgx's and
// dbscope's, and the descriptions they keep, after a scope that changed
// how names resolve (kindResolve: a search_path, a role, a temporary
// table): a statement prepared, or described, or only run under it would
// otherwise run in the next scope as PostgreSQL re-parses it there, and
// where what its names reach has another shape there, fail (0A000: its
// result type changed, 08P01: its cached description no longer matches)
// or be decoded as the other shape. Or that set a setting that changes
// how a statement's text and constants are read (kindResolve too:
// DateStyle, TimeZone…): a statement prepared under it would run in the
// next scope as parsed then, with no error. One round trip, on this path
// alone; the statements are prepared again as they run. Where the scope
// also ran code the classifier does not know (a PL/pgSQL function), the
// plans PostgreSQL keeps for that code, analysed under the scope's
// settings, are dropped too (DISCARD PLANS: analysed again at their next
// use), in one more round trip.
func (p *Pool) dropStatements(ctx context.Context, c *session) error {
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	return withLock(c.pin.conn, func() error {
		c.prep, c.stale, c.descs.m = nil, nil, nil
		if c.pin.seen&kindCode != 0 {
			if _, err := c.px.Exec(ctx, "DISCARD PLANS"); err != nil {
				return err
			}
		}
		return c.px.DeallocateAll(ctx)
	})
}

// cleanupTimeout bounds the statements a boundary runs to clean a
// connection (rollback, reset, OnRelease): a stalled server costs that
// much, and the connection is discarded.
const cleanupTimeout = 5 * time.Second

// cleanupCtx keeps ctx's values but not its cancellation: cleanup must run
// after the work's context has ended (client gone).
func cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
}

// unpin discards the pinned connection.
func (s *Scope) unpin(why discardReason) {
	c := s.c
	s.closeRows()
	s.disarm()
	s.closeStmts()
	for _, t := range c.pin.txs {
		// The connection is going away; this only ends database/sql's
		// bookkeeping (and its goroutine) for the transaction.
		t.tx.Rollback()
	}
	c.pin.forgetTxs()
	if c.pin.handedOut {
		// As in abandon: do not wait for what user code holds.
		s.abandon(why)
		return
	}
	s.pool.discard(c.pin.conn, why)
	s.forget()
}

// abandon discards a connection user code may still use, or that still
// has a result open: the driver connection is closed now, which frees the
// server session and makes whatever user code kept of it fail, and
// database/sql's bookkeeping finishes in the background, when what user
// code holds (rows, a transaction) ends. BeginTx's transactions are
// rolled back there: a *sql.Tx holds the *sql.Conn until it ends, and
// one whose context never ends, with rows left open, would hold it for
// ever (database/sql's rollback closes its rows, whose reads fail now).
func (s *Scope) abandon(why discardReason) {
	c := s.c
	s.disarm()
	conn := c.pin.conn
	if c.pc != nil {
		withLock(conn, func() error { c.pc.Close(context.Background()); return nil })
	} else {
		conn.Raw(func(dc any) error {
			if cl, ok := dc.(interface{ Close() error }); ok {
				cl.Close()
			}
			return nil
		})
	}
	txs := make([]*sql.Tx, len(c.pin.txs))
	for i, t := range c.pin.txs {
		txs[i] = t.tx
	}
	c.pin.forgetTxs()
	discardFn := s.pool.discardFn
	go func() {
		for _, tx := range txs {
			tx.Rollback()
		}
		conn.Raw(discardFn)
	}()
	s.pool.c.discarded[why].Add(1)
	s.forget()
}

func (s *Scope) forget() {
	// qctx keeps its context until the next quiet statement: for a
	// socket's scope, the socket's own (wsconsumer's callbacks all get
	// the same one).
	c := s.c
	if c.pin.leak != nil {
		c.pin.leak.Stop()
		c.pin.leak = nil
	}
	s.c = nil
	s.pool.c.pinned.Add(-1)
}

// closeRows closes what the scope's statements left open.
func (s *Scope) closeRows() {
	c := s.c
	if r := c.pin.open1; r != nil {
		c.pin.open1 = nil
		r.abort()
	}
}

func (s *Scope) closeStmts() {
	c := s.c
	for _, st := range c.pin.stmts {
		st.Close()
	}
	clear(c.pin.stmts)
	c.pin.stmts = c.pin.stmts[:0]
}

// logCleanup logs a cleanup that failed after the work it followed.
func (p *Pool) logCleanup(msg string, err error) {
	p.opts.Logger.Warn(msg, "err", err)
}
