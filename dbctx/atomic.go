package dbctx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// Atomic runs fn in a transaction on the scope in ctx, the port of
// Django's transaction.atomic: the transaction commits when fn returns nil
// and rolls back when it returns an error or panics (the panic goes on
// after the rollback). Statements run through the scope inside fn are
// part of the transaction. The transaction begins lazily, at fn's first
// statement: an fn that never touches the database takes no slot and no
// connection. A nested Atomic uses a savepoint, so its failure rolls back
// only its own work.
//
// Atomic needs a sync scope: in an [Async] context call it inside [Do].
// Boundaries ([CloseOld]) inside fn do nothing. The error of a failed
// commit is returned, wrapped: the work did not happen.
func Atomic(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	s := From(ctx)
	switch {
	case s == nil:
		return ErrNoScope
	case s.async:
		return ErrAsyncContext
	case s.ended:
		return ErrScopeEnded
	case s.atomic == 0:
		return s.atomicTx(ctx, fn)
	}
	if s.x.tx == nil {
		// The outer level has not begun yet: a savepoint needs it.
		if _, err := s.use(ctx, ""); err != nil {
			return err
		}
	}
	return s.savepoint(ctx, fn)
}

func (s *Scope) atomicTx(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	x := s.extra()
	s.atomic, x.atomicCtx, x.tx, x.onCommit, x.beginErr = 1, ctx, nil, nil, nil
	done := false
	defer func() {
		tx := x.tx
		s.atomic, x.atomicCtx, x.tx = 0, nil, nil
		if !done {
			// fn panicked: roll back and let the panic go on.
			x.onCommit = nil
			if tx != nil {
				tx.Rollback()
			}
		}
	}()
	ferr := fn(ctx)
	done = true
	tx := x.tx
	s.disarm() // the end of a transaction runs with its own context
	if ferr != nil {
		x.onCommit = nil
		if tx != nil {
			if rerr := tx.Rollback(); rerr != nil && !errors.Is(rerr, sql.ErrTxDone) {
				s.observe(ctx, rerr, false)
			}
		}
		return ferr
	}
	if tx != nil {
		if cerr := tx.Commit(); cerr != nil {
			x.onCommit = nil
			s.observe(ctx, cerr, false)
			return fmt.Errorf("dbctx: commit: %w", cerr)
		}
	}
	fns := x.onCommit
	x.onCommit = nil
	for _, f := range fns {
		f()
	}
	return nil
}

// OnCommit runs fn once the transaction of the [Atomic] that ctx is in has
// committed, the port of Django's transaction.on_commit: for side effects
// others must only see for committed work (pushing a message to sockets,
// sending an email). If the transaction rolls back, fn never runs; a
// function registered in a nested Atomic that rolls back is dropped with
// it. Outside Atomic fn runs at once. fn runs on the goroutine that
// committed, after the commit, before Atomic returns.
func OnCommit(ctx context.Context, fn func()) {
	s := From(ctx)
	if s == nil || s.atomic == 0 {
		fn()
		return
	}
	s.x.onCommit = append(s.x.onCommit, fn)
}

// beginAtomic begins the transaction of a pending Atomic on the freshly
// used connection, with Atomic's context: database/sql rolls a transaction
// back when its context ends, and a statement's context may be shorter.
func (s *Scope) beginAtomic() error {
	tx, err := s.beginTx(s.x.atomicCtx, nil)
	if err != nil {
		return err
	}
	s.x.tx = tx
	if err := s.onBegin(s.x.atomicCtx); err != nil {
		// Nothing of the transaction runs without what OnBegin sets:
		// it is rolled back now, and the Atomic's statements, and its
		// commit, fail.
		tx.Rollback()
		s.x.beginErr = err
		return err
	}
	return nil
}

func (s *Scope) savepoint(ctx context.Context, fn func(ctx context.Context) error) (err error) {
	if s.conn == nil {
		return ErrScopeEnded
	}
	name := "dbctx_sp_" + strconv.Itoa(s.atomic)
	s.disarm()
	if _, err := s.conn.ExecContext(ctx, "SAVEPOINT "+name); err != nil {
		return s.observe(ctx, err, false)
	}
	s.atomic++
	x := s.x
	mark := len(x.onCommit)
	done := false
	defer func() {
		s.atomic--
		if !done {
			x.onCommit = x.onCommit[:mark]
			s.rollbackTo(ctx, name)
		}
	}()
	ferr := fn(ctx)
	done = true
	if ferr != nil {
		x.onCommit = x.onCommit[:mark]
		s.rollbackTo(ctx, name)
		return ferr
	}
	if _, err := s.conn.ExecContext(ctx, "RELEASE SAVEPOINT "+name); err != nil {
		return s.observe(ctx, err, false)
	}
	return nil
}

func (s *Scope) rollbackTo(ctx context.Context, name string) {
	s.disarm()
	if s.conn == nil {
		return
	}
	ctx, cancel := cleanupCtx(ctx)
	defer cancel()
	if _, err := s.conn.ExecContext(ctx, "ROLLBACK TO SAVEPOINT "+name+"; RELEASE SAVEPOINT "+name); err != nil {
		// The outer transaction is lost with the connection; its commit
		// will fail and say so.
		s.observe(ctx, err, false)
	}
}
