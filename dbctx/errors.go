package dbctx

import (
	"errors"
	"fmt"
	"runtime/debug"
)

var (
	// ErrBusy is returned when no worker slot could be had: the wait queue
	// was full, or the wait timeout passed; and when every connection the
	// *sql.DB allows (its MaxOpenConns) was in use and none came free
	// within Options.ConnectTimeout; and when PgBouncer refused a
	// statement that waited for a server connection past its
	// query_wait_timeout (every one of its pool in use). The caller
	// should shed the work (HTTP 503, websocket close 1013) rather than
	// retry at once. Each is counted (Stats.Busy) and logged at WARN,
	// a burst as one record per 10 seconds with its count (see
	// Options.Logger).
	ErrBusy = errors.New("dbctx: pool busy")

	// ErrAsyncContext is returned when a handle is used directly from a
	// context marked async with [Async]. Database work there must go
	// through [Do]. It ports Django's SynchronousOnlyOperation.
	ErrAsyncContext = errors.New("dbctx: database used from an async context outside Do")

	// ErrNoScope is returned when a context carries no scope (see
	// [Pool.Scope]) and so no pool to run on: [From] found none because
	// nothing put one there. Mount middleware.DB around the handler (for
	// a websocket, give wsconsumer's handler a pool or mount
	// middleware.DB outside it), or run the work in [Pool.Do], which
	// needs no scope in the context.
	ErrNoScope = errors.New("dbctx: no scope in context: mount middleware.DB on the route, or use Pool.Do")

	// ErrScopeEnded is returned when a scope is used after [Scope.End].
	ErrScopeEnded = errors.New("dbctx: scope ended")

	// ErrSessionLost is returned, wrapping the driver's error, for a
	// statement whose connection was lost (the server ended the session,
	// the network failed, its context was canceled) after other
	// statements of the scope had run on it, or while rows were read
	// (from their Err and Close: their statement had run), and then for
	// every statement of the scope until its next boundary ([CloseOld],
	// the end of the request, message or [Do]). Whatever those
	// statements left in the session (a setting, a tenant, a temporary
	// table, a transaction from BeginTx) is gone with it, so nothing is
	// run again on a fresh connection, which would lack it. So inside a
	// transaction, where the first statement lost is ErrSessionLost too,
	// and so is an [Atomic] whose transaction was lost (also by a panic in
	// a [Do] inside its function, which discards the connection).
	ErrSessionLost = errors.New("dbctx: session lost: the connection failed after statements had run on it; not run on a fresh connection, which would lack their session state")

	// ErrCommitUnknown is returned by [Atomic], wrapping the driver's
	// error, where the connection failed after its COMMIT was sent and
	// before the server's answer was read (the network cut, the answer
	// lost): PostgreSQL may have committed, or not, and nothing on the
	// client can tell. A retry of the unit of work may then do it twice:
	// make it idempotent, or check what PostgreSQL holds first. A COMMIT
	// the server refused, or one never sent, is reported as the error it
	// is: the work did not happen. So is a statement run outside a
	// transaction, which commits as it ends, where its connection failed
	// after it was sent and before the server's answer (a backend
	// terminated while the commit waited for a synchronous standby, the
	// network cut): it is not run again (a NOTIFY too leaves no session
	// state, and is sent as its transaction commits). The same holds
	// where the answer was being read from what the scope handed out:
	// a batch's results ([Scope.SendBatch]) and their Close, rows and
	// their Err and Close.
	ErrCommitUnknown = errors.New("dbctx: commit outcome unknown: the connection failed after COMMIT was sent, before its answer; PostgreSQL may have committed")

	// ErrSessionState is returned, wrapped with the statement, under
	// [Options.TransactionPooling] for a statement that sets session-level
	// state (SET, set_config(…, false), LISTEN, PREPARE, a cursor WITH
	// HOLD, a temporary table, a session advisory lock…) and for
	// PrepareContext, before anything is sent: behind a pooler in
	// transaction mode that state would go to another client, and the
	// scope's next transaction may run on another server connection.
	ErrSessionState = errors.New("dbctx: session-level state under transaction pooling: it would reach another client; set it per transaction inside Atomic (SET LOCAL, set_config(…, true), pg_advisory_xact_lock, CREATE TEMP TABLE … ON COMMIT DROP), or in Options.OnBegin")

	// ErrUnavailable wraps the driver's error when no connection to the
	// database could be had for a reason that passes by itself: the
	// database, or the pooler in front of it, is down, starting up
	// (SQLSTATE 57P03) or full (53300), or the network refused, reset or
	// timed out the connection. Statements fail at once rather than wait;
	// the pool recovers by itself once the database is back. Each failed
	// connect is counted (Stats.Unavailable) and logged at WARN, the
	// repeats aggregated. Package middleware answers it with 503 and
	// Retry-After, wsconsumer with close 1013 (try again later).
	ErrUnavailable = errors.New("dbctx: database unavailable")

	// ErrMisconfigured wraps the driver's error when no connection to the
	// database could be had for a reason that retrying will not fix: the
	// database or the role does not exist (SQLSTATE 3D000, 28000; behind
	// PgBouncer, which says each with 08P01, its "no such user", "no such
	// database", "password authentication failed", "unsupported startup
	// parameter", and PostgreSQL's refusals it passes on, read in
	// English) or does not allow connections (55000), the
	// password is wrong (28P01) or pg_hba.conf has no entry for it, the
	// role lacks CONNECT, a startup parameter of the connection string
	// is refused (unknown, a value out of range, one only the server's
	// configuration sets: 42704, 22023, 55P02), the host name does not
	// resolve, TLS or
	// authentication fails, the connection string does not parse, what
	// answers at the address does not speak PostgreSQL's protocol (an
	// HTTP server at the wrong port). A connect that fails without a word
	// from the server (it closed the connection: an HTTPS server does, on
	// PostgreSQL's first bytes; or nothing PostgreSQL would send came
	// before ConnectTimeout: an SMTP server's banner) is ErrUnavailable,
	// until the pool's probe of the address, in the background, finds
	// another service there: then the later ones are ErrMisconfigured,
	// saying what answered, at once, with no connect tried (but one
	// every 30 s, whose success ends it: see [Options.ConnectTimeout]). An
	// operator must fix the configuration (the DSN, roles, pg_hba.conf,
	// certificates). The pool logs each cause once at ERROR (again after
	// a connection has succeeded in between) and counts every such
	// connect (Stats.Misconfigured); callers need not log it again.
	// Package middleware answers it with 500, wsconsumer with close 1011.
	ErrMisconfigured = errors.New("dbctx: cannot connect: misconfiguration")

	// ErrPoolClosed is returned when a slot is asked of a closed [Pool].
	ErrPoolClosed = errors.New("dbctx: pool closed")

	// ErrInAtomic is returned by [Scope.BeginTx] inside [Atomic], and,
	// before anything is sent, for a statement that would end the
	// transaction Atomic began or begin another (BEGIN, START
	// TRANSACTION, COMMIT, END, ROLLBACK but ROLLBACK TO, ABORT,
	// PREPARE TRANSACTION, in SQL, alone, in a string of several or in a
	// batch): the statements after it would run outside the transaction
	// Atomic commits or rolls back. Return an error from Atomic's function
	// to roll back; nest [Atomic] for a savepoint. On pgx's driver it is
	// also the error of Atomic, and of the scope's statements in it,
	// once code the scope does not see ([Scope.Conn], [Scope.Pgx]) has
	// ended the transaction Atomic began.
	ErrInAtomic = errors.New("dbctx: transaction control inside Atomic")

	// ErrConnBusy is returned, before anything is sent, for a statement
	// of a scope whose connection still has the rows (or batch results)
	// of an earlier statement open: from another goroutine of the unit
	// of work, or from the same one before it closed them. Close rows, or
	// read them to the end, before the next statement; QueryRowContext
	// and QueryRow hold nothing. So is a statement of the scope while
	// [Scope.Pgx]'s fn holds the connection (from fn itself, which must
	// not use the scope, it would wait for itself forever), and one while
	// rows of what the scope handed out (the *sql.Tx of [Scope.BeginTx],
	// the raw connection) are open.
	ErrConnBusy = errors.New("dbctx: connection busy")

	// errRowsOpen is ErrConnBusy for open rows.
	errRowsOpen = fmt.Errorf("%w: rows of an earlier statement are still open", ErrConnBusy)

	// errHandleRowsOpen is ErrConnBusy for open rows of a handle.
	errHandleRowsOpen = fmt.Errorf("%w: rows of a transaction of BeginTx, or of the raw connection, are still open", ErrConnBusy)

	// errTxRefused is ErrConnBusy for a statement that the driver
	// refused in BeginTx's transaction (driver.ErrBadConn, which pgx's
	// stdlib says for a connection busy with rows of the *sql.Tx).
	errTxRefused = fmt.Errorf("%w: the driver refused the statement in the transaction of BeginTx (rows of it still open, or the connection lost)", ErrConnBusy)

	// errInPgxFn is ErrConnBusy while Scope.Pgx's fn runs.
	errInPgxFn = fmt.Errorf("%w: Scope.Pgx's fn holds the connection (fn must not use the scope)", ErrConnBusy)

	// ErrSettingValue is returned, wrapped with the setting's name, for a
	// statement whose context declares a setting ([Setting.With]) with a
	// value PostgreSQL cannot take (a NUL byte): the statement is not
	// sent.
	ErrSettingValue = errors.New("dbctx: setting value contains a NUL byte")
)

// PanicError is the error [Do] returns when its function panicked. The
// connection the function was using has been discarded by then.
type PanicError struct {
	Value any    // the value passed to panic
	Stack []byte // the stack of the panicking goroutine
	// Hook names the hook of Options that panicked (OnAcquire, OnBegin,
	// OnRelease, OnWait, OnPin), "" for Do's function. A hook's panic is
	// its failure: OnAcquire's, OnBegin's and OnRelease's fail what they
	// were for, as their errors do, wrapping it; OnWait's and OnPin's are
	// logged, and the wait or pin goes on.
	Hook string
}

// Error implements error.
func (e *PanicError) Error() string {
	if e.Hook != "" {
		return fmt.Sprintf("panic: %v", e.Value) // wrapped with the hook's name
	}
	return fmt.Sprintf("dbctx: panic in Do: %v", e.Value)
}

// callHook calls f, a hook of Options named name, and returns its error,
// or its panic as a *PanicError: a panic unwinding through the pool's
// bookkeeping would leak the connection or slot at hand (or, from under
// the scope's lock, crash the process). Where f ends the goroutine
// instead (runtime.Goexit: t.FailNow in a test's hook), which nothing
// stops, exited (if not nil) gives back what the caller holds that the
// scope's end would not.
func callHook(name string, f func() error, exited func()) (err error) {
	returned := false
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack(), Hook: name}
		} else if !returned && exited != nil {
			exited()
		}
	}()
	err = f()
	returned = true
	return err
}

// observeHook calls f, an observing hook of Options named name (OnWait,
// OnPin), logging its panic; exited as callHook's.
func (p *Pool) observeHook(name string, f func(), exited func()) {
	if err := callHook(name, func() error { f(); return nil }, exited); err != nil {
		p.opts.Logger.Error("dbctx: Options."+name+" panicked; ignored", "err", err, "stack", string(err.(*PanicError).Stack))
	}
}

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// errRowsCut is what rows report that a boundary closed before they were
// read to their end (the unit of work ended, or the Atomic they belong to
// lost its transaction): they were cut short, not exhausted.
var errRowsCut = errors.New("dbctx: rows closed by the scope (a boundary, or the end of their Atomic) before they were read to the end")

// errOutcomeUnknown is ErrCommitUnknown for a statement run outside a
// transaction (see outcomeUnknown), saying so.
var errOutcomeUnknown error = outcomeUnknownError{}

type outcomeUnknownError struct{}

func (outcomeUnknownError) Error() string {
	return "dbctx: statement outcome unknown: the connection failed after it was sent, before its answer; PostgreSQL may have run and committed it"
}

func (outcomeUnknownError) Is(target error) bool { return target == ErrCommitUnknown }
