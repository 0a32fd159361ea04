package dbctx

import (
	"context"
	"time"
)

// Cancellation of statements run with the scope's own context.
//
// database/sql starts a goroutine for every statement whose context can be
// canceled (it closes the rows when the context ends), and pgx registers a
// context.AfterFunc for it (it sets a past deadline on the socket). For a
// request's or a socket's scope that is every statement, and all of them
// watch the same context: the one the scope was made from. So the scope
// watches that context once, with one context.AfterFunc for its whole
// life, and runs statements whose context is done exactly when it is done
// under a quietCtx, which database/sql and pgx see as never canceled. When
// the context ends, interrupt does what pgx's default handler does to the
// connection in use: a past deadline on its socket. The blocked read fails,
// pgx closes the connection (sending the server a cancel request), and the
// statement returns context.Canceled, as pgx reports a timeout caused by its
// context. Statements with any other context go through unchanged.

// quietCtx is ctx with no Done channel: database/sql and pgx do not watch
// it. Its Err is ctx's, so pgx reports an interrupted read as ctx's error.
type quietCtx struct{ context.Context }

func (quietCtx) Done() <-chan struct{} { return nil }

// stmtCtx is the context a statement runs with on the pinned connection:
// through quiet, or, for one that must not be run quiet, ctx itself, with
// the connection disarmed.
func (s *Scope) stmtCtx(ctx context.Context, h how) context.Context {
	if h&notQuiet == 0 {
		return s.quiet(ctx)
	}
	s.disarm()
	return ctx
}

// quiet returns the context a statement of the scope runs with on the
// pinned connection: a quietCtx for ctx when ctx is done exactly when the
// scope's own context is (the scope's watch covers it), else ctx itself.
func (s *Scope) quiet(ctx context.Context) context.Context {
	done := ctx.Done()
	if s.c == nil || s.c.pc == nil || done == nil || done != s.ctx.Context.Done() || ctx.Err() != nil {
		s.disarm()
		return ctx
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	if s.canceled {
		return ctx
	}
	if s.stopWatch == nil {
		s.stopWatch = afterFunc(s.ctx.Context, s.interrupt)
	}
	s.armed = s.c.pc.Conn()
	// One quietCtx per scope, aimed at each statement's ctx in turn: a
	// statement's context is used while it runs and by its rows, which
	// are closed before the next statement runs, so a scope needs only one,
	// and it costs no allocation.
	s.qctx.Context = ctx
	return &s.qctx
}

// interrupt runs when the scope's own context ends: a statement that may
// be reading from the armed connection fails at once.
func (s *Scope) interrupt() {
	s.imu.Lock()
	defer s.imu.Unlock()
	s.canceled = true
	if s.armed != nil {
		s.armed.SetDeadline(time.Unix(1, 0))
		s.tripped = true
	}
}

// disarm stops interrupt from touching the pinned connection: before a
// statement that is not run quiet, and before the connection is given
// back or discarded. A deadline interrupt set while nothing was reading is
// lifted; one that failed a read has made pgx close the connection.
func (s *Scope) disarm() {
	if s.armed == nil { // set under s.mu, which the caller holds
		return
	}
	s.imu.Lock()
	defer s.imu.Unlock()
	if s.tripped {
		s.armed.SetDeadline(time.Time{})
		s.tripped = false
	}
	s.armed = nil
}

// unwatch stops the scope's watch of its context, at its end.
func (s *Scope) unwatch() {
	if s.stopWatch != nil {
		s.stopWatch()
		s.stopWatch = nil
	}
}
