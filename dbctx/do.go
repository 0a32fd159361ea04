package dbctx

import (
	"context"
	"runtime/debug"

	"github.com/dbscope/dbscope/internal/lazyslot"
)

// Do runs fn in a worker slot with a usable scope, the port of Channels'
// database_sync_to_async: it takes a slot (waiting within the pool's queue
// bound and timeout, or until ctx is done; past either, ErrBusy), runs
// [CloseOld] before and after fn, and frees what fn left on exit. The
// context fn gets carries the scope, so [From] and nested calls find it.
//
// Where ctx carries a scope that is not async (a request's, a sync
// consumer's), fn runs on that scope: a nested Do reuses its slot and
// connection, so it cannot deadlock even with one slot. A Do on a
// goroutine of its own while another goroutine's rows of that scope are
// open (or Scope.Pgx's fn runs) runs no boundary, which would cut them
// short: fn's statements fail with ErrConnBusy until they are closed. Otherwise (an
// [Async] context, a background job's) fn runs on a fresh scope that ends
// when Do returns. Without a scope in ctx, Do returns ErrNoScope; use
// [Pool.Do] there.
//
// Do returns fn's error: a failure of the cleanup after fn (a reset that
// failed, OnRelease's error) discards the connection, is logged and
// counted in [Pool.Stats], and is not returned, since fn's work stands. A
// panic in fn discards the connection fn was using and becomes a
// *[PanicError] carrying the stack; where that connection carried the
// session of the code around Do (a nested Do, an [Atomic] around it),
// that code's statements get [ErrSessionLost] until the scope's
// boundary. Do blocks until fn returns. Where ctx is done already, Do
// returns ctx.Err() and runs nothing, as database/sql does.
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
	if err := ctx.Err(); err != nil {
		return err
	}
	if s := p.From(ctx); s != nil && !s.async && !s.isEnded() {
		return s.do(ctx, fn, false)
	}
	if p.opts.OnDo != nil {
		return p.doObserved(ctx, fn)
	}
	s := p.newScope(ctx)
	defer s.End() // deferred: fn may end the goroutine (runtime.Goexit)
	return s.do(&s.ctx, fn, false)
}

func init() {
	lazyslot.Do = func(ctx context.Context, scope any, fn func(ctx context.Context) error) error {
		return scope.(*Scope).do(ctx, func(ctx context.Context, _ *Scope) error { return fn(ctx) }, true)
	}
	lazyslot.Holds = func(scope any) bool {
		s := scope.(*Scope)
		if !s.mu.TryLock() {
			// A statement or boundary is under way (another goroutine of
			// the callback's): it may be taking the slot, and the send
			// must not wait for it. Holding the message is the safe side.
			return true
		}
		defer s.mu.Unlock()
		return s.slot
	}
}

func (s *Scope) isEnded() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}

func (s *Scope) do(ctx context.Context, fn func(ctx context.Context, s *Scope) error, lazy bool) (err error) {
	if err := s.enterDo(ctx, lazy); err != nil {
		return err
	}
	defer func() {
		r := recover()
		s.mu.Lock()
		defer s.mu.Unlock()
		s.depth--
		if r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
			if s.c != nil {
				// Its session is lost, with what statements left in it
				// and the transaction of an Atomic around this Do, if
				// any: the scope's statements fail until its boundary
				// (at once, for an outermost Do), and that Atomic does
				// not commit.
				s.unpin(discardPanic)
				s.loseSession(discardPanic)
			}
			discardOthers(ctx, s)
		}
		if s.depth == 0 {
			s.leaveDo(ctx)
		}
	}()
	return fn(ctx, s)
}

// enterDo takes a slot for the outermost Do of the scope, unless lazy
// (internal/lazyslot: then its first statement takes it, as a request's
// does, and a scope that cannot run statements refuses now), and runs its
// boundary.
func (s *Scope) enterDo(ctx context.Context, lazy bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lazy && (s.async || s.ended) {
		return s.usable()
	}
	if s.depth == 0 {
		if !lazy {
			if err := s.takeSlot(ctx); err != nil {
				return err
			}
		}
		s.doBoundary = s.boundaryAtDo()
		if s.doBoundary {
			// A failed cleanup of earlier work has discarded that
			// connection; fn gets a fresh one and is not failed for it.
			if err := s.release(ctx, false); err != nil {
				s.pool.logCleanup("dbctx: cleaning up before Do", err)
			}
		}
		if lazy {
			s.freeIdleSlot() // of a connection the boundary gave back
		}
	}
	s.depth++
	return nil
}

// leaveDo runs the boundary after the outermost Do and frees its slot.
// Cleanup never rewrites the outcome: fn's work stands (or failed)
// whatever the cleanup after it does; a failed cleanup has discarded the
// connection and is counted in Stats.Discarded.
func (s *Scope) leaveDo(ctx context.Context) {
	if s.doBoundary && s.atomic == 0 && !s.busy() {
		if err := s.release(ctx, false); err != nil {
			s.pool.logCleanup("dbctx: cleaning up after Do", err)
		}
	}
	s.freeIdleSlot()
}

// boundaryAtDo reports whether the outermost Do runs boundaries, at both
// ends: not inside an Atomic, nor inside a transaction of the caller's,
// which Do leaves alone, nor while the connection is busy (see busy).
func (s *Scope) boundaryAtDo() bool {
	return s.atomic == 0 && !s.busy() && !(s.c != nil && s.inTx(s.c))
}

// busy reports whether another goroutine of the unit is at work on the
// scope's connection: rows of its statement open, Scope.Pgx's fn. A Do
// on a goroutine of its own (the goroutines of a handler, each calling
// code that uses Do) leaves them alone: its boundary would cut their
// rows short and give the connection back under them; its statements
// meanwhile fail with ErrConnBusy, as any statement does. Looked at
// before the connection's state, which the rows' reads change outside
// s.mu. Under s.mu.
func (s *Scope) busy() bool {
	return s.c != nil && (s.c.pin.open.Load() > 0 || s.c.pin.inFn.Load())
}

// freeIdleSlot frees the slot of a scope that pins no connection.
func (s *Scope) freeIdleSlot() {
	if s.c == nil {
		s.freeSlot()
	}
}

// discardOthers discards, after a panic in a Do on s, the connections that
// the other pools' scopes in ctx pin, whose state is as unknown as s's:
// those not inside a Do or Atomic of their own, which see the panic as
// the error it became and clean up at their own boundary.
func discardOthers(ctx context.Context, s *Scope) {
	for o := range visible(ctx) {
		if o == s || o.pool == s.pool {
			continue
		}
		o.mu.Lock()
		if o.c != nil && o.depth == 0 && o.atomic == 0 {
			o.unpin(discardPanic)
			o.freeSlot()
		}
		o.mu.Unlock()
	}
}
