// Package scopes lets the packages of the module ask dbctx what its API
// does not say: dbctx sets its functions when it is initialized.
package scopes

import (
	"context"
	"errors"
)

// AtomicOutside reports whether a scope that ctx's innermost scope is
// nested in (of another pool) has an Atomic open: a transaction that work
// done in the innermost scope's own transaction is not part of (see
// groups' Postgres engine, which sends NOTIFY in its pool's transaction
// only where no such one is open).
var AtomicOutside func(ctx context.Context) bool

// OnCommitOrUnknown is dbctx.OnCommit, with unknown run instead of fn
// where the commit's outcome is unknown (dbctx.ErrCommitUnknown: the
// connection failed after COMMIT was sent): groups tells every member
// that the message may be missing.
var OnCommitOrUnknown func(ctx context.Context, fn, unknown func())

// ErrCommitRollback is in the error of an Atomic whose COMMIT the server
// answered ROLLBACK, or of a nested Atomic whose RELEASE it refused
// (25P02): a statement of the transaction had failed, so nothing of it was
// committed (middleware.Atomic sends a handler's 4xx then).
var ErrCommitRollback = errors.New("transaction rolled back: an earlier statement in it failed")

// ErrConnectionFailed is in the error of an Atomic whose transaction was
// lost because its connection failed (the server ended the session, the
// network), not for a cause of the unit's own (a panic in a Do inside it,
// a context ending mid-statement): middleware.Atomic answers it 503.
var ErrConnectionFailed = errors.New("the connection failed")
