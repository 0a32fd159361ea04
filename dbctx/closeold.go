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
// transaction left open that cannot be rolled back, a panic while in use)
// is discarded; one that is obsolete (pinned longer than
// [Options.ConnMaxAge]; with 0, always) is given back after any open
// transaction is rolled back, the session reset if dirty, and
// [Options.OnRelease] run. A scope with no connection frees its slot.
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
	if s == nil || s.async || s.atomic > 0 {
		return nil
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

// release runs a boundary. With final set (the scope's end) the
// connection is always given back or discarded. The slot is the
// caller's business.
func (s *Scope) release(ctx context.Context, final bool) error {
	s.lost = false // a new unit of work starts on a fresh session
	if s.conn == nil {
		return nil
	}
	return s.check(ctx, final)
}

func (s *Scope) check(ctx context.Context, final bool) error {
	p := s.pool
	s.closeRows()
	if s.pg != nil && s.pg.IsBusy() {
		s.abandon()
		return nil
	}
	if s.bad {
		s.unpin(s.badWhy)
		return nil
	}
	if s.pg != nil && s.pg.IsClosed() {
		why := discardBroken
		if ctx.Err() != nil {
			why = discardCanceled
		}
		s.unpin(why)
		return nil
	}
	// From here on the boundary runs statements of its own (rollback,
	// reset, OnRelease) and then gives the connection back.
	s.disarm()
	if err := s.rollback(ctx); err != nil {
		s.unpin(discardTx)
		return err
	}
	age := p.opts.ConnMaxAge
	obsolete := final || age == 0 || (age > 0 && monotonic()-s.pinnedAt >= age)
	if !obsolete {
		// Kept pinned for the next unit of work, which may come much
		// later: one killed while idle in between is replaced now, since
		// nothing run on it later could be retried.
		if s.sock != nil && s.sock.dead() {
			p.sawDeath()
			s.unpin(discardDead)
		}
		return nil
	}
	return s.giveBack(ctx)
}

// rollback ends every transaction still open on the pinned connection.
func (s *Scope) rollback(ctx context.Context) error {
	var errs []error
	if x := s.x; x != nil {
		for _, tx := range x.txs {
			if err := tx.Rollback(); err == nil {
				s.pool.c.rolledBack.Add(1)
			} else if !errors.Is(err, sql.ErrTxDone) {
				errs = append(errs, err)
			}
		}
		clear(x.txs)
		x.txs = x.txs[:0]
	}
	if len(errs) > 0 {
		return fmt.Errorf("dbctx: rolling back a transaction left open: %w", errors.Join(errs...))
	}
	if s.inTxNow() {
		// Begun in raw SQL, or on the raw connection.
		ctx, cancel := cleanupCtx(ctx)
		defer cancel()
		if _, err := s.conn.ExecContext(ctx, "ROLLBACK"); err != nil {
			return fmt.Errorf("dbctx: rolling back a transaction left open: %w", err)
		}
		s.pool.c.rolledBack.Add(1)
	}
	s.rawTx = false
	return nil
}

func (s *Scope) inTxNow() bool {
	if s.pg != nil {
		return s.pg.TxStatus() != 'I'
	}
	return s.rawTx
}

// giveBack cleans the session and returns the connection: kept for the
// next scope (keep.go), else to the *sql.DB. check has disarmed it.
func (s *Scope) giveBack(ctx context.Context) error {
	p := s.pool
	s.closeStmts()
	if s.poisoned {
		s.unpin(discardUnresettable)
		return nil
	}
	tp := p.opts.TransactionPooling
	if !tp && !s.dirty && s.sock != nil && s.sock.changed(s.pg) {
		// Something the scope ran changed the session user without the
		// classifier seeing it: a view's or an operator's code, say.
		s.dirty, s.sweep = true, true
	}
	if s.dirty || p.opts.ResetAlways || p.opts.OnRelease != nil {
		var cancel context.CancelFunc
		ctx, cancel = cleanupCtx(ctx)
		defer cancel()
	}
	if p.opts.OnRelease != nil {
		if err := p.opts.OnRelease(ctx, s.conn); err != nil {
			s.unpin(discardHook)
			return fmt.Errorf("dbctx: OnRelease: %w", err)
		}
		s.dirty, s.sweep = true, true // what it ran is not seen
	}
	// Behind transaction pooling a reset would reach whichever server
	// connection the pooler picks; what could leak was refused (see
	// Scope.use).
	if !tp && (s.dirty || p.opts.ResetAlways) {
		s.sweep = s.sweep || p.opts.ResetAlways
		p.c.resets.Add(1)
		if err := s.reset(ctx); err != nil {
			s.unpin(discardReset)
			return fmt.Errorf("dbctx: resetting session: %w", err)
		}
	}
	if s.sock != nil {
		s.sock.released = monotonic()
	}
	switch {
	case s.handedOut:
		// User code may still hold a *sql.Tx or *sql.Rows of it, which
		// keeps *sql.Conn.Close waiting until they end.
		go s.conn.Close()
	case !p.keep(keptConn{conn: s.conn, pc: s.pg, sock: s.sock, taken: s.taken}):
		s.conn.Close()
	}
	p.c.givenBack.Add(1)
	s.forget()
	return nil
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
	s.closeRows()
	s.disarm()
	s.closeStmts()
	if x := s.x; x != nil {
		for _, tx := range x.txs {
			// The connection is going away; this only ends database/sql's
			// bookkeeping (and its goroutine) for the transaction.
			tx.Rollback()
		}
		clear(x.txs)
		x.txs = x.txs[:0]
	}
	if s.handedOut {
		// As in giveBack: do not wait for what user code holds.
		go s.pool.discard(s.conn, -1)
		s.pool.c.discarded[why].Add(1)
	} else {
		s.pool.discard(s.conn, why)
	}
	s.forget()
}

// abandon discards a connection that still has a result open: a *sql.Row
// never scanned, or rows read from the raw connection and never closed.
// database/sql closes a *sql.Conn only once such rows are closed, so the
// pgx connection is closed now, which frees the server session; the
// scope's own unscanned row is then scanned, which fails at once and
// releases it, and database/sql's bookkeeping for rows of the raw
// connection finishes in the background, when their owner closes them or
// their context ends.
func (s *Scope) abandon() {
	s.disarm()
	conn := s.conn
	conn.Raw(func(dc any) error {
		if c, ok := dc.(interface{ Close() error }); ok {
			c.Close()
		}
		return nil
	})
	if s.row != nil {
		// A *sql.Row never scanned holds the *sql.Conn until it is: with
		// the connection closed, scanning it fails at once and frees it.
		s.row.Scan()
	}
	go conn.Raw(s.pool.discardFn)
	s.pool.c.discarded[discardBroken].Add(1)
	s.pool.opts.Logger.Warn("dbctx: a result was left open at a boundary (a *sql.Row never scanned, or *sql.Rows never closed); connection discarded")
	s.forget()
}

func (s *Scope) forget() {
	// qctx keeps its context until the next quiet statement: for a
	// socket's scope, the socket's own (wsconsumer's callbacks all get
	// the same one).
	s.conn, s.pg, s.sock, s.row = nil, nil, nil, nil
	s.dirty, s.sweep, s.poisoned, s.rawTx, s.bad = false, false, false, false, false
	s.handedOut, s.unchecked, s.used = false, false, false
	s.pool.c.pinned.Add(-1)
	if x := s.x; x != nil {
		if x.leak != nil {
			x.leak.Stop()
			x.leak = nil
		}
	}
}

func (s *Scope) closeRows() {
	if s.rows != nil {
		s.rows.Close()
		s.rows = nil
	}
	if s.prows != nil || (s.x != nil && s.x.batch != nil) {
		s.closePgx()
	}
}

func (s *Scope) closeStmts() {
	x := s.x
	if x == nil {
		return
	}
	for _, st := range x.stmts {
		st.Close()
	}
	clear(x.stmts)
	x.stmts = x.stmts[:0]
}
