// Package answer says what an error means to the client of a request or
// of a websocket: the one answer that packages middleware and wsconsumer
// both give to the conditions of package dbctx (overload, outage,
// shutdown, misconfiguration) and to a client that went away, and
// whether their caller logs it.
package answer

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"syscall"
	"time"

	"github.com/dbscope/dbscope/dbctx"
)

// Kind is what an error says about the work that failed.
type Kind int8

const (
	// Other is an error of the handler's own: 500, close 1011, logged
	// at ERROR by the caller.
	Other Kind = iota
	// Busy is dbctx.ErrBusy, overload: 503 with Retry-After, close 1013.
	Busy
	// Unavailable is dbctx.ErrUnavailable, an outage: 503 with
	// Retry-After, close 1013. The pool has logged it (aggregated).
	Unavailable
	// Closed is dbctx.ErrPoolClosed: the server is shutting down, another
	// instance may serve: 503 with Retry-After, close 1001 (going away).
	Closed
	// Misconfigured is dbctx.ErrMisconfigured: 500, close 1011. The pool
	// has logged it once per cause: the caller does not log it again.
	Misconfigured
	// Gone is a client that went away (its context canceled, its
	// connection reset or closed): nobody reads an answer; logged at
	// Debug, not an error.
	Gone
)

var names = [...]string{"other", "busy", "unavailable", "closed", "misconfigured", "gone"}

func (k Kind) String() string { return names[k] }

// Of returns the kind of err. clientGone says that the client is gone
// (the request's or the socket's context ended): then an error that
// says so (context.Canceled, a connection reset or closed) is Gone,
// whatever else it wraps.
func Of(err error, clientGone bool) Kind {
	switch {
	case clientGone && IsGone(err):
		return Gone
	case errors.Is(err, dbctx.ErrBusy):
		return Busy
	case errors.Is(err, dbctx.ErrUnavailable):
		return Unavailable
	case errors.Is(err, dbctx.ErrPoolClosed):
		return Closed
	case errors.Is(err, dbctx.ErrMisconfigured):
		return Misconfigured
	}
	return Other
}

// IsGone reports whether err is what reading from, writing to or
// waiting for a client that went away fails with.
func IsGone(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.ErrClosedPipe)
}

// Handled reports whether the caller has nothing to add to k: it is a
// condition the pool explains (and, where it needs it, logged), or no
// error of anyone's. Other is the caller's to log and answer.
func (k Kind) Handled() bool { return k != Other }

// StatusClientClosedRequest is the status written for a client that
// went away (nginx's 499): nobody reads it, but access logs and metrics
// count it apart from the server's own failures.
const StatusClientClosedRequest = 499

// HTTP answers k on w: 503 Service Unavailable with a Retry-After of
// retryAfter, rounded up to whole seconds, for Busy, Unavailable and
// Closed; 500 for Misconfigured and Other, with no detail; a bare 499 for
// Gone.
func HTTP(w http.ResponseWriter, k Kind, retryAfter time.Duration) {
	switch k {
	case Busy, Unavailable, Closed:
		secs := int((retryAfter + time.Second - 1) / time.Second)
		w.Header().Set("Retry-After", strconv.Itoa(max(secs, 1)))
		http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
	case Gone:
		w.WriteHeader(StatusClientClosedRequest)
	default:
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
	}
}

// Websocket close statuses (RFC 6455, 7.4.1), as plain numbers: package
// middleware does not import a websocket package.
const (
	CloseGoingAway     = 1001
	CloseInternalError = 1011
	CloseTryAgainLater = 1013
)

// Close returns the close status and reason a websocket is closed with
// for k: 1013 try again later for Busy and Unavailable, 1001 going away
// for Closed, 1011 internal error for Misconfigured and Other. For Gone
// it returns 0: the socket is closed already.
func (k Kind) Close() (code int, reason string) {
	switch k {
	case Busy, Unavailable:
		return CloseTryAgainLater, "try again later"
	case Closed:
		return CloseGoingAway, "server shutting down"
	case Gone:
		return 0, ""
	}
	return CloseInternalError, "internal error"
}
