package middleware

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/answer"
	"github.com/dbscope/dbscope/internal/logattrs"
	"github.com/dbscope/dbscope/internal/scopes"
)

// AtomicOptions configures [AtomicWithOpts]. The zero value is the default.
type AtomicOptions struct {
	// MaxBuffer bounds the response body held back until the commit.
	// A handler that writes more gets ErrResponseTooLarge from Write, its
	// transaction is rolled back and the client gets 500. Default: 4 MiB.
	MaxBuffer int

	// Logger receives commit failures and misconfiguration (Atomic
	// mounted without middleware.DB outside it: logged once, each request
	// answered 500). Default: slog.Default().
	Logger *slog.Logger

	// LogAttrs, if set, returns attributes added to every record logged
	// about a request (a request id, a user, a tenant), from the
	// request's context; records are logged with that context too.
	// Default: none.
	// A panic in it is not passed on: the record is logged without
	// its attributes, with log_attrs_panic saying what it panicked with
	// (so is a panic of Logger's handler, which loses the record).
	LogAttrs func(ctx context.Context) []slog.Attr
}

// ErrResponseTooLarge is returned by Write inside [Atomic] once the
// response outgrows [AtomicOptions].MaxBuffer.
var ErrResponseTooLarge = errors.New("middleware: response too large to hold until commit")

// Atomic runs the request's database work in one transaction, the port of
// Django's ATOMIC_REQUESTS; see [AtomicWithOpts].
func Atomic(next http.Handler) http.Handler {
	return AtomicWithOpts(nil)(next)
}

// AtomicWithOpts returns middleware that runs each request's database work
// through the scope in one transaction (see dbctx.Atomic), begun lazily at
// the first statement. It must be mounted inside [DB].
//
// The transaction commits when the handler returns without panicking and
// with a status below 500, and the request's context has not ended (a
// client that left, a deadline: the work did not happen, logged at Debug);
// otherwise it rolls back. The response is held
// in memory until then and sent only once the commit has succeeded; a
// failed commit becomes 500 Internal Server Error (or what [Answer] gives
// a condition of package dbctx: 503 when the pool was busy or the
// database down, with the RetryAfter of the DB that mounted the pool of
// the transaction), so a client never sees a 2xx for work that was not
// committed. A 4xx the handler wrote after a statement of the
// transaction failed (a unique violation answered 409) is sent as written,
// logged at Debug: PostgreSQL rolled the transaction back, and nothing of
// it, the statements before the failed one included, was committed; a 2xx
// or 3xx written over a failed statement becomes 500, as a failed commit
// does. The same holds where Atomic is mounted twice (the inner one a
// savepoint). A
// transaction whose connection failed before COMMIT was sent
// (dbctx.ErrSessionLost, the server's or the network's doing: a backend
// terminated, a failover) committed nothing: 503 with Retry-After, logged
// at Warn; one lost for a cause of the handler's own (a panic in a
// dbctx.Do inside it, a context of its own ending mid-statement) is a
// 500, logged at Error. A commit whose outcome is
// unknown (dbctx.ErrCommitUnknown:
// the connection failed after COMMIT was sent, and PostgreSQL may have
// committed) becomes 500, without Retry-After, logged at Error as such.
// Headers the handler set are dropped with a failed response.
//
// Streaming does not mix with holding the response: Flush inside Atomic
// does nothing until the commit, Hijack fails (package wsconsumer refuses
// a websocket route inside Atomic with 500), and a body beyond MaxBuffer
// rolls the transaction back (see [AtomicOptions]). Mount Atomic only on
// routes that answer with bounded bodies; stream from routes without it.
func AtomicWithOpts(opts *AtomicOptions) func(http.Handler) http.Handler {
	var o AtomicOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxBuffer < 0 {
		panic("middleware: Atomic expects MaxBuffer >= 0")
	}
	if o.MaxBuffer == 0 {
		o.MaxBuffer = 4 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return func(next http.Handler) http.Handler {
		var noDBLogged atomic.Bool // a misconfigured mount: every request fails alike
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			if dbctx.From(ctx) == nil {
				if !noDBLogged.Swap(true) {
					logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelError, "middleware: Atomic needs middleware.DB mounted outside it",
						slog.String("path", r.URL.Path))
				}
				http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
				return
			}
			hw := &heldWriter{w: w, header: make(http.Header), max: o.MaxBuffer}
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				next.ServeHTTP(hw, r)
				switch {
				case hw.overflow:
					return ErrResponseTooLarge
				case hw.status() >= 500:
					return errRollback
				}
				return nil
			})
			switch k := answer.Of(err, ctx.Err() != nil); {
			case err == nil, errors.Is(err, errRollback):
				hw.send()
			case errors.Is(err, scopes.ErrCommitRollback) && hw.status() >= 400:
				// A statement of the transaction failed and the handler
				// answered it with a 4xx (a unique violation's 409):
				// nothing committed, which its answer says already. A
				// success answered over a failed statement goes on to
				// 500 below: it would tell of work not done.
				logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelDebug, "middleware: Atomic request not committed",
					slog.String("path", r.URL.Path), slog.Int("status", hw.status()), slog.Any("err", err))
				hw.send()
			case errors.Is(err, dbctx.ErrCommitUnknown):
				// Not "not committed": PostgreSQL may hold the work.
				// Answered 500, not 503, which invites a retry that
				// may do it twice.
				logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelError, "middleware: Atomic request's commit outcome unknown",
					slog.String("path", r.URL.Path), slog.Any("err", err))
				http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
			case errors.Is(err, scopes.ErrConnectionFailed) && ctx.Err() == nil:
				// The connection failed before COMMIT was sent (a
				// backend terminated, idle_in_transaction_session_timeout,
				// a failover): nothing committed, and the request may be
				// sent again, as after an outage.
				logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelWarn, "middleware: Atomic request not committed: its connection was lost",
					slog.String("path", r.URL.Path), slog.Any("err", err))
				answer.HTTP(w, answer.Unavailable, retryAfter(ctx, dbctx.From(ctx).Pool()))
			case ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded):
				// The request's deadline (a timeout middleware's) ended it:
				// not committed, the handler's failure no more than a
				// client's leaving is; answered as http.TimeoutHandler
				// answers.
				logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelDebug, "middleware: Atomic request not committed",
					slog.String("path", r.URL.Path), slog.Any("err", err))
				http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
			case k.Handled():
				// Not committed for a reason of the client's or the
				// database's (the request's context ended, an outage):
				// no failure of the handler's.
				logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelDebug, "middleware: Atomic request not committed",
					slog.String("path", r.URL.Path), slog.Any("err", err))
				// As Answer would, with the RetryAfter of the pool
				// whose transaction it was.
				answer.HTTP(w, k, retryAfter(ctx, dbctx.From(ctx).Pool()))
			default:
				logattrs.Log(ctx, o.Logger, o.LogAttrs, slog.LevelError, "middleware: Atomic request not committed",
					slog.String("path", r.URL.Path), slog.Any("err", err))
				http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
			}
		})
	}
}

// errRollback rolls back a request that answered 5xx; its response is
// still sent as the handler wrote it.
var errRollback = errors.New("middleware: rolled back on a 5xx response")

// heldWriter holds a response until the transaction's fate is known.
type heldWriter struct {
	w        http.ResponseWriter
	header   http.Header
	code     int
	body     bytes.Buffer
	max      int
	overflow bool
}

func (h *heldWriter) Header() http.Header { return h.header }

func (h *heldWriter) WriteHeader(code int) {
	if h.code == 0 && code >= 200 {
		h.code = code
	}
}

func (h *heldWriter) Write(b []byte) (int, error) {
	if h.code == 0 {
		h.code = http.StatusOK
	}
	if h.overflow || h.body.Len()+len(b) > h.max {
		h.overflow = true
		return 0, ErrResponseTooLarge
	}
	return h.body.Write(b)
}

// Flush does nothing: the response is held until the commit.
func (h *heldWriter) Flush() {}

// Hijack fails: a hijacked connection cannot wait for the commit.
func (h *heldWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, fmt.Errorf("middleware: Hijack inside Atomic: %w", http.ErrNotSupported)
}

func (h *heldWriter) Unwrap() http.ResponseWriter { return h.w }

func (h *heldWriter) status() int {
	if h.code == 0 {
		return http.StatusOK
	}
	return h.code
}

// send writes the held response out.
func (h *heldWriter) send() {
	dst := h.w.Header()
	for k, v := range h.header {
		dst[k] = v
	}
	h.w.WriteHeader(h.status())
	h.w.Write(h.body.Bytes())
}
