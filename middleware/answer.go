package middleware

import (
	"net/http"

	"github.com/dbscope/dbscope/internal/answer"
)

// Answer answers err when it is a condition that package dbctx explains
// and the handler has nothing to add to, and reports whether it did:
//
//   - dbctx.ErrBusy (the pool is overloaded), dbctx.ErrUnavailable (the
//     database, or the pooler in front of it, is down) and
//     dbctx.ErrPoolClosed (the server is shutting down): 503 Service
//     Unavailable with a Retry-After of [DBOptions].RetryAfter, that of
//     the DB that made the request's scope (1s by default; with scopes
//     of several pools, the longest of their RetryAfter);
//   - dbctx.ErrMisconfigured (the database cannot be connected to until
//     an operator fixes the configuration): 500, with no detail; the pool
//     has logged it once per cause, so the handler need not;
//   - an error because the client went away (r's context ended): a bare
//     499, which nobody reads; not an error to log.
//
// Any other error is the handler's to log and answer (Answer returns
// false), as is a nil err. Handlers call it on a database error before
// their own error handling:
//
//	if err != nil {
//		if middleware.Answer(w, r, err) {
//			return
//		}
//		log.Error(…)
//		http.Error(w, …, http.StatusInternalServerError)
//	}
//
// Package wsconsumer answers the same conditions the same way at a
// websocket's Connect (its Retry-After always 1s), and with close
// statuses (1013, 1001, 1011) later.
func Answer(w http.ResponseWriter, r *http.Request, err error) bool {
	if err == nil {
		return false
	}
	k := answer.Of(err, r.Context().Err() != nil)
	if !k.Handled() {
		return false
	}
	answer.HTTP(w, k, retryAfter(r.Context(), nil))
	return true
}
