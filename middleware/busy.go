package middleware

import (
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/dbscope/dbscope/dbctx"
)

// Busy answers err with 503 Service Unavailable and a Retry-After of one
// second when err is dbctx.ErrBusy (the pool refused the work) or
// dbctx.ErrUnavailable (the database, or the pooler in front of it, is
// down), and reports whether it did. Handlers call it on a database error before
// their own error handling:
//
//	if err != nil {
//		if middleware.Busy(w, err) {
//			return
//		}
//		…
//	}
func Busy(w http.ResponseWriter, err error) bool {
	if !unavailable(err) {
		return false
	}
	serviceUnavailable(w, time.Second)
	return true
}

func serviceUnavailable(w http.ResponseWriter, after time.Duration) {
	secs := int((after + time.Second - 1) / time.Second)
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
}

// refuse answers a request whose slot could not be had at its start.
func refuse(w http.ResponseWriter, err error, after time.Duration) {
	switch {
	case unavailable(err), errors.Is(err, dbctx.ErrPoolClosed):
		serviceUnavailable(w, after)
	default:
		// The client is gone (its context ended): nobody reads an answer.
		w.WriteHeader(http.StatusServiceUnavailable)
	}
}

// unavailable reports whether err says the database cannot take the work
// now: the pool is full, or the database is down.
func unavailable(err error) bool {
	return errors.Is(err, dbctx.ErrBusy) || errors.Is(err, dbctx.ErrUnavailable)
}
