package wsconsumer

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/answer"
	"github.com/dbscope/dbscope/internal/logattrs"
)

// How a socket's failures are answered, logged and counted. The conditions
// of package dbctx get the answer package middleware gives them
// (internal/answer): at Connect the same HTTP status, later the close
// status that says the same. ERROR is for what an operator must act on:
// a callback's own error or panic. A misconfiguration is the pool's to
// log (once per cause); overload, an outage, a closed pool and a client
// that went away are logged at Debug and counted (Stats).

// Who ended a socket first (Session.ended), which is what a callback
// that fails on the end (its context canceled, a send refused) counts as.
const (
	endClient   = iota + 1 // the client went, closed, or stopped answering (no pong, writes stalled): Gone
	endServer              // Session.Close (the consumer, a failed callback, IdleTimeout): no failure
	endShutdown            // Handler.Shutdown: Closed, as a pool closing
)

// cancel cancels the socket's context, recording by as who ended the
// socket unless someone did before.
func (s *Session) cancel(by int32) {
	s.ended.CompareAndSwap(0, by)
	s.sock.cancel()
}

// endedBy returns who ended the socket where err is what its end makes a
// callback fail with (ErrClosed, a close status, a canceled context, a
// broken connection), else 0.
func (s *Session) endedBy(err error) int32 {
	if errors.Is(err, ErrClosed) || websocket.CloseStatus(err) != -1 || answer.IsGone(err) {
		return s.ended.Load()
	}
	return 0
}

// kindOf says what err, a callback's, means for the socket. A read or a
// send on a socket the client closed or reset is the client going away,
// whatever the callback made of it; so is a context canceled because the
// client went. One canceled by Shutdown is the server closing.
func (s *Session) kindOf(err error) answer.Kind {
	switch s.endedBy(err) {
	case endShutdown:
		return answer.Closed
	case endClient:
		return answer.Gone
	}
	if errors.Is(err, ErrClosed) || websocket.CloseStatus(err) != -1 {
		return answer.Gone
	}
	return answer.Of(err, answer.IsGone(err) && !errors.Is(err, context.Canceled))
}

// Fail closes the socket as a callback that returned err would close it:
// for the work of a goroutine started with [Session.Go], which has no
// callback to return its error to. The conditions of package dbctx get
// their close statuses (1013 for overload or an outage, 1001 for a
// closed pool, 1011 for a misconfiguration, which the pool has logged);
// an error that says the client went away (the socket closed, its
// context canceled) closes nothing more and is logged at Debug; any
// other error closes with 1011 and is logged at ERROR. Each is counted in
// Stats. A nil err does nothing.
func (s *Session) Fail(err error) {
	if err != nil {
		s.h.fail(s, "goroutine", err)
	}
}

// fail closes the socket after a callback failed.
func (h *Handler) fail(s *Session, callback string, err error) {
	var ce *closeError
	if errors.As(err, &ce) {
		s.Close(ce.code, ce.reason)
		return
	}
	if s.endedBy(err) == endServer {
		// The server closed the socket on purpose (Session.Close,
		// IdleTimeout): the callback ended with it, no failure of
		// anyone's, counted nowhere.
		h.log(s.wctx, slog.LevelDebug, "wsconsumer: callback ended by the socket's close",
			slog.String("callback", callback), slog.Any("err", err))
		return
	}
	k := s.kindOf(err)
	h.note(s.wctx, k, callback, err)
	switch k {
	case answer.Gone:
	case answer.Other:
		h.logFailure(s, callback, err)
		fallthrough
	default:
		if !s.closing.Load() { // Shutdown's close is under way
			code, reason := k.Close()
			s.Close(websocket.StatusCode(code), reason)
		}
	}
}

// note counts a failure of kind k, and logs at Debug those no ERROR is
// logged for here.
func (h *Handler) note(ctx context.Context, k answer.Kind, callback string, err error) {
	switch k {
	case answer.Other:
		h.count.failed.Add(1)
		return
	case answer.Misconfigured:
		h.count.failed.Add(1) // the pool has logged it
	case answer.Gone:
		h.count.clientGone.Add(1)
	default:
		h.count.busy.Add(1)
	}
	h.log(ctx, slog.LevelDebug, "wsconsumer: callback ended by "+k.String(),
		slog.String("callback", callback), slog.Any("err", err))
}

func (h *Handler) logFailure(s *Session, what string, err error) {
	attrs := []slog.Attr{slog.String("callback", what), slog.String("path", s.req.URL.Path), slog.Any("err", err)}
	var pe *dbctx.PanicError
	if errors.As(err, &pe) {
		attrs = append(attrs, slog.String("stack", string(pe.Stack)))
	}
	h.log(s.wctx, slog.LevelError, "wsconsumer: callback failed", attrs...)
}

func (h *Handler) recoverLog(s *Session, what string) {
	if r := recover(); r != nil {
		h.count.failed.Add(1)
		h.logFailure(s, what, &dbctx.PanicError{Value: r, Stack: debug.Stack()})
		s.Close(websocket.StatusInternalError, "internal error")
	}
}

// refuse answers an upgrade request that Connect did not accept, or
// whose socket ended while it ran (err then says so).
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, s *Session, err error) {
	var re *RejectError
	if errors.As(err, &re) {
		h.count.rejected.Add(1)
		http.Error(w, re.Reason, re.Status)
		return
	}
	k := answer.Of(err, r.Context().Err() != nil)
	switch s.endedBy(err) {
	case endShutdown:
		k = answer.Closed
	case endClient:
		k = answer.Gone
	}
	h.note(r.Context(), k, "connect", err)
	if k == answer.Other {
		h.log(r.Context(), slog.LevelError, "wsconsumer: callback failed",
			slog.String("callback", "connect"), slog.String("path", r.URL.Path), slog.Any("err", err))
	}
	answer.HTTP(w, k, time.Second)
}

func (h *Handler) disconnect(pool *dbctx.Pool, s *Session, code websocket.StatusCode) {
	if h.c.Disconnect == nil {
		return
	}
	// The socket's context is canceled by now; Disconnect gets a fresh
	// deadline with the same values (and scope).
	ctx, cancel := context.WithTimeout(context.WithoutCancel(s.cbCtx()), h.opts.DisconnectTimeout)
	defer cancel()
	err := h.call(ctx, pool, &Callback{Kind: CallbackDisconnect, Session: s, Code: code}, func(ctx context.Context) error {
		h.c.Disconnect(ctx, s, code)
		return nil
	})
	if err == nil {
		return
	}
	// Disconnect takes its slot at its first statement (see run), so the
	// pool's load does not keep it from running; a refusal here (the
	// socket's scope unusable) did, and skipped the consumer's cleanup,
	// which an operator may need to know.
	switch k := answer.Of(err, false); k {
	case answer.Other:
		h.count.failed.Add(1)
		h.logFailure(s, "disconnect", err)
	case answer.Busy, answer.Unavailable, answer.Closed:
		h.count.busy.Add(1)
		h.log(s.wctx, slog.LevelWarn, "wsconsumer: Disconnect not run: "+k.String(),
			slog.String("path", s.req.URL.Path), slog.Any("err", err))
	default:
		h.note(s.wctx, k, "disconnect", err)
	}
}

// log logs a record about a socket or an upgrade request, with the
// attributes Options.LogAttrs finds in ctx.
func (h *Handler) log(ctx context.Context, level slog.Level, msg string, attrs ...slog.Attr) {
	logattrs.Log(ctx, h.opts.Logger, h.opts.LogAttrs, level, msg, attrs...)
}

// logOnce logs msg at ERROR the first time logged is set: a
// misconfiguration of the handler's mount, on which every upgrade fails
// alike (answered 500 and counted in Stats.Failed each time).
func (h *Handler) logOnce(ctx context.Context, logged *atomic.Bool, msg string, attrs ...slog.Attr) {
	if !logged.Swap(true) {
		h.log(ctx, slog.LevelError, msg, attrs...)
	}
}
