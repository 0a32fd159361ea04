package dbctx

import (
	"errors"
	"fmt"
)

var (
	// ErrBusy is returned when no worker slot could be had: the wait queue
	// was full, or the wait timeout passed. The caller should shed the
	// work (HTTP 503, websocket close 1013) rather than retry at once.
	ErrBusy = errors.New("dbctx: pool busy")

	// ErrAsyncContext is returned when a handle is used directly from a
	// context marked async with [Async]. Database work there must go
	// through [Do]. It ports Django's SynchronousOnlyOperation.
	ErrAsyncContext = errors.New("dbctx: database used from an async context outside Do")

	// ErrNoScope is returned when a context carries no scope (see
	// [Pool.Scope]) and so no pool to run on.
	ErrNoScope = errors.New("dbctx: no scope in context")

	// ErrScopeEnded is returned when a scope is used after [Scope.End].
	ErrScopeEnded = errors.New("dbctx: scope ended")

	// ErrSessionLost is returned, wrapping the driver's error, for a
	// statement whose connection was lost (the server ended the session,
	// the network failed, its context was canceled) after other
	// statements of the scope had run on it, and then for every statement
	// of the scope until its next boundary ([CloseOld], the end of the
	// request, message or [Do]). Whatever those statements left in the
	// session (a setting, a tenant, a temporary table, a transaction from
	// BeginTx) is gone with it, so nothing is run again on a fresh
	// connection, which would lack it.
	ErrSessionLost = errors.New("dbctx: session lost: the connection failed after statements had run on it; not run on a fresh connection, which would lack their session state")

	// ErrPoolClosed is returned when a slot is asked of a closed [Pool].
	ErrPoolClosed = errors.New("dbctx: pool closed")

	// ErrInAtomic is returned by [Scope.BeginTx] inside [Atomic]: the
	// connection is already in a transaction; nest [Atomic] instead.
	ErrInAtomic = errors.New("dbctx: BeginTx inside Atomic")
)

// PanicError is the error [Do] returns when its function panicked. The
// connection the function was using has been discarded by then.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the panicking goroutine
}

// Error implements error.
func (e *PanicError) Error() string {
	return fmt.Sprintf("dbctx: panic in Do: %v", e.Value)
}

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}
