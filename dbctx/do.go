package dbctx

import (
	"context"
	"runtime/debug"
)

// Do runs fn in a worker slot with a usable scope, the port of Channels'
// database_sync_to_async: it takes a slot (waiting within the pool's queue
// bound and timeout, or until ctx is done; past either, ErrBusy), runs
// [CloseOld] before and after fn, and frees what fn left on exit. The
// context fn gets carries the scope, so [From] and nested calls find it.
//
// Where ctx carries a scope that is not async (a request's, a sync
// consumer's), fn runs on that scope: a nested Do reuses its slot and
// connection, so it cannot deadlock even with one slot. Otherwise (an
// [Async] context, a background job's) fn runs on a fresh scope that ends
// when Do returns. Without a scope in ctx, Do returns ErrNoScope; use
// [Pool.Do] there.
//
// Do returns fn's error: a failure of the cleanup after fn (a reset that
// failed, OnRelease's error) discards the connection, is logged and
// counted in [Pool.Stats], and is not returned, since fn's work stands. A
// panic in fn discards the connection fn was using and becomes a
// *[PanicError] carrying the stack. Do blocks until fn returns.
func Do(ctx context.Context, fn func(ctx context.Context, s *Scope) error) error {
	s := From(ctx)
	if s == nil {
		return ErrNoScope
	}
	return s.pool.Do(ctx, fn)
}

// DoValue is [Do] for a function that returns a value.
func DoValue[T any](ctx context.Context, fn func(ctx context.Context, s *Scope) (T, error)) (T, error) {
	var v T
	err := Do(ctx, func(ctx context.Context, s *Scope) error {
		var err error
		v, err = fn(ctx, s)
		return err
	})
	return v, err
}

// Do is [Do] on pool p: where ctx carries a usable scope of p, fn runs on
// it; otherwise on a fresh scope of p that ends when Do returns.
//
// Where ctx carries scopes of other pools too, Do runs the boundaries of
// p's alone: the others' connections stay as they are (a panic in fn
// excepted, which discards every connection fn may have been using).
func (p *Pool) Do(ctx context.Context, fn func(ctx context.Context, s *Scope) error) error {
	if s := p.From(ctx); s != nil && !s.async && !s.ended {
		return s.do(ctx, fn)
	}
	s := &Scope{pool: p, outer: outerOf(ctx)}
	s.ctx = scopeCtx{Context: ctx, s: s}
	err := s.do(&s.ctx, fn)
	s.End()
	return err
}

func (s *Scope) do(ctx context.Context, fn func(ctx context.Context, s *Scope) error) (err error) {
	// A transaction already open on the scope belongs to the caller: Do
	// runs inside it and leaves it alone at both ends.
	boundary := s.depth == 0 && s.atomic == 0 && !(s.conn != nil && s.inTx())
	if s.depth == 0 {
		if err := s.takeSlot(ctx); err != nil {
			return err
		}
		if boundary {
			// A failed cleanup of earlier work has discarded that
			// connection; fn gets a fresh one and is not failed for it.
			if err := s.release(ctx, false); err != nil {
				s.pool.opts.Logger.Warn("dbctx: cleaning up before Do", "err", err)
			}
		}
	}
	s.depth++
	defer func() {
		s.depth--
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
			s.atomic = 0
			if s.conn != nil {
				s.unpin(discardPanic)
			}
			discardOthers(ctx, s)
		}
		if s.depth == 0 {
			if boundary {
				// Cleanup never rewrites the outcome: fn's work stands
				// (or failed) whatever the cleanup after it does; a
				// failed cleanup has discarded the connection and is
				// counted in Stats.Discarded.
				if rerr := s.release(ctx, false); rerr != nil {
					s.pool.opts.Logger.Warn("dbctx: cleaning up after Do", "err", rerr)
				}
			}
			s.freeIdleSlot()
		}
	}()
	return fn(ctx, s)
}

// freeIdleSlot frees the slot of a scope that pins no connection.
func (s *Scope) freeIdleSlot() {
	if s.conn == nil {
		s.freeSlot()
	}
}

// discardOthers discards, after a panic in a Do on s, the connections that
// the other pools' scopes in ctx pin, whose state is as unknown as s's:
// those not inside a Do or Atomic of their own, which see the panic as
// the error it became and clean up at their own boundary.
func discardOthers(ctx context.Context, s *Scope) {
	for o := range visible(ctx) {
		if o != s && o.pool != s.pool && o.conn != nil && o.depth == 0 && o.atomic == 0 {
			o.unpin(discardPanic)
			o.freeSlot()
		}
	}
}
