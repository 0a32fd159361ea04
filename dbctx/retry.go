package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"iter"
	"strings"
	"sync/atomic"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
)

var errNotPgx = errors.New("dbctx: connection is not a pgx stdlib connection")

// retryable reports whether err, the answer to one statement, proves the
// statement had no effect, so running it again on a fresh connection is
// safe: nothing was sent (pgx's SafeToRetry, which database/sql sees as
// driver.ErrBadConn), or the server ended the session (class 57P) while the
// connection was outside a transaction, so the statement's implicit
// transaction was rolled back with it.
func (s *Scope) retryable(ctx context.Context, err error) bool {
	// Inside Atomic only its BEGIN (its tx not yet set) may run again;
	// not at all once the session holds state another connection would
	// lack.
	if s.pg == nil || s.rawTx || s.stateful || s.atomicTxOpen() || ctx.Err() != nil {
		return false
	}
	// pgx keeps the status of the last ReadyForQuery: the one from before
	// this statement, since a session ended mid-statement sends none.
	if s.pg.TxStatus() != 'I' {
		return false
	}
	if errors.Is(err, driver.ErrBadConn) || pgconn.SafeToRetry(err) {
		return true
	}
	var pe *pgconn.PgError
	return errors.As(err, &pe) && strings.HasPrefix(pe.Code, "57P")
}

// maxRetries bounds the runs of one statement after the first. One is
// enough for a single backend killed; more cover a round of kills (a
// failover, pg_terminate_backend of every backend), where the next idle
// connection may be dying too, its backend not yet gone when checked.
// Every retried run is proven to have had no effect.
const maxRetries = 3

// run runs one statement on c, and again on another connection while its
// failure proves it had no effect (see retryable), at most maxRetries more
// times (one more on a connection pinned without the socket check); then
// it looks at the last error for an unusable connection. With
// quiet set, the statement gets ctx through Scope.quiet (see cancel.go).
func run[T any](ctx context.Context, s *Scope, c *sql.Conn, quiet bool, stmt func(context.Context, *sql.Conn) (T, error)) (T, error) {
	retries := maxRetries
	if s.unchecked {
		// One more for a connection pinned without the socket check,
		// which would have found it dead (see Pool.check).
		retries++
	}
	v, err := stmt(s.stmtCtx(ctx, quiet), c)
	for try := 0; err != nil && try < retries && s.retryable(ctx, err); try++ {
		c, rerr := s.repin(ctx)
		if rerr != nil {
			break
		}
		v, err = stmt(s.stmtCtx(ctx, quiet), c)
	}
	s.observe(ctx, err)
	s.ran(err)
	return v, err
}

// repin discards the scope's broken connection and pins a fresh one for a
// retry.
func (s *Scope) repin(ctx context.Context) (*sql.Conn, error) {
	s.pool.sawDeath()
	s.unpin(discardBroken)
	s.pool.c.retries.Add(1)
	return s.pinned(ctx)
}

// observe looks at a statement's error for signs that the connection is
// unusable. Outside a transaction such a connection is discarded at once,
// so the next statement gets a fresh one; inside one it stays pinned and
// failing until the boundary, so later statements cannot silently run
// outside the transaction they were meant for.
func (s *Scope) observe(ctx context.Context, err error) {
	if err == nil || s.conn == nil {
		return
	}
	closed := errors.Is(err, driver.ErrBadConn) || errors.Is(err, sql.ErrConnDone) ||
		(s.pg != nil && s.pg.IsClosed())
	if !closed {
		return
	}
	why := discardBroken
	if ctx.Err() != nil {
		why = discardCanceled
	}
	s.pool.sawDeath()
	if s.inTx() {
		s.bad, s.badWhy = true, why
		return
	}
	s.unpin(why)
}

// inTx reports whether the pinned connection is, or may be, in a
// transaction.
func (s *Scope) inTx() bool {
	if s.atomicTxOpen() || s.rawTx {
		return true
	}
	if s.pg != nil {
		return s.pg.TxStatus() != 'I'
	}
	return s.x != nil && len(s.x.txs) > 0
}

// note marks the scope dirty when query changes session state, and notes a
// transaction begun in raw SQL (see classify).
//
// What the statement does to the session counts once it has run (see
// run): then the scope is stateful, and a statement that fails later is
// not run again on another connection, which would not have that state.
func (s *Scope) note(query string) {
	k := s.pool.notes.kind(query)
	if k&kindBegin != 0 {
		s.rawTx = true
	}
	if k&kindPrepare != 0 {
		s.extra().prepName = preparedName(query)
	}
	state := k&kindState != 0
	s.pending = state
	s.dirty = s.dirty || state
}

// queryKind is what a statement's text says it does to the session.
type queryKind uint8

const (
	kindState   queryKind = 1 << iota // changes session state
	kindBegin                         // begins a transaction
	kindPrepare                       // PREPARE: kindState too
)

// classify reads what query does to the session. It is a cheap scan, not
// a parser: it errs towards state, which only costs one reset round trip.
// It dispatches on the first keyword's length rather than trying every
// keyword.
func classify(query string) queryKind {
	var k queryKind
	switch kw := firstKeyword(query); len(kw) {
	case 3:
		if strings.EqualFold(kw, "set") {
			k = kindState
		}
	case 4:
		if strings.EqualFold(kw, "load") {
			k = kindState
		}
	case 5:
		switch {
		case strings.EqualFold(kw, "begin"), strings.EqualFold(kw, "start"):
			k = kindBegin
		case strings.EqualFold(kw, "reset"):
			k = kindState
		}
	case 6:
		if strings.EqualFold(kw, "listen") {
			k = kindState
		}
	case 7:
		switch {
		case strings.EqualFold(kw, "prepare"):
			k = kindState | kindPrepare
		case strings.EqualFold(kw, "declare"):
			k = kindState
		}
	}
	if k&kindState == 0 && mentionsSessionState(query) {
		k |= kindState
	}
	return k
}

// noteCache remembers classify's answers for the queries seen last,
// slotted by the address of the query's text: most queries are constants,
// the same string statement after statement, so the scan runs once per
// query rather than once per statement. An entry holds its query, which
// keeps the text alive and unchanged (strings are immutable), and a hit
// compares the text itself, so a slot shared by two queries only misses.
type noteCache [noteSlots]atomic.Pointer[noteEntry]

const (
	noteSlots    = 64
	noteMaxQuery = 4 << 10 // longer queries are scanned every time, not kept
)

type noteEntry struct {
	query string
	kind  queryKind
}

func (c *noteCache) kind(query string) queryKind {
	if len(query) > noteMaxQuery {
		return classify(query)
	}
	slot := &c[(uintptr(unsafe.Pointer(unsafe.StringData(query)))>>3)%noteSlots]
	if e := slot.Load(); e != nil && e.query == query {
		return e.kind
	}
	k := classify(query)
	slot.Store(&noteEntry{query, k})
	return k
}

// ran records what a statement that succeeded did to the session, on the
// connection it ran on (which a retry may have changed).
func (s *Scope) ran(err error) {
	if err == nil && s.pending {
		s.dirty, s.stateful = true, true
		if x := s.x; x != nil && x.prepName != "" {
			x.prepared = append(x.prepared, x.prepName)
		}
	}
	s.pending = false
	if s.x != nil {
		s.x.prepName = ""
	}
}

// preparedName returns the statement name of "PREPARE name …", quoted
// as written.
func preparedName(q string) string {
	q = strings.TrimLeft(q, " \t\r\n")
	q = strings.TrimLeft(q[len("prepare"):], " \t\r\n")
	if strings.HasPrefix(q, `"`) {
		if end := strings.IndexByte(q[1:], '"'); end >= 0 {
			return q[:end+2]
		}
		return ""
	}
	end := 0
	for end < len(q) && (q[end] == '_' || q[end] >= '0' && q[end] <= '9' || q[end]|0x20 >= 'a' && q[end]|0x20 <= 'z') {
		end++
	}
	return q[:end]
}

func firstKeyword(q string) string {
	i := 0
	for i < len(q) && (q[i] == ' ' || q[i] == '\t' || q[i] == '\n' || q[i] == '\r' || q[i] == '(') {
		i++
	}
	j := i
	for j < len(q) && (q[j]|0x20 >= 'a' && q[j]|0x20 <= 'z') {
		j++
	}
	return q[i:j]
}

// mentionsSessionState reports whether q mentions, anywhere, something
// that may leave state in the session: set_config, an advisory lock, a
// temporary table (TEMPORARY, or TEMP followed by a space). It looks only
// around the bytes those words hinge on ('_' and 'p'), which IndexByte finds
// fast, since it runs on every statement.
func mentionsSessionState(q string) bool {
	for i := range indexes(q, '_') {
		if i >= 3 && hasFoldPrefix(q[i-3:], "set_config") || i >= 8 && hasFoldPrefix(q[i-8:], "advisory_lock") {
			return true
		}
	}
	for _, p := range []byte{'p', 'P'} {
		for i := range indexes(q, p) {
			if i < 3 || i+1 >= len(q) || !strings.EqualFold(q[i-3:i+1], "temp") {
				continue
			}
			switch q[i+1] {
			case ' ', '\t', '\n', '\r':
				return true
			}
			if hasFoldPrefix(q[i+1:], "orary") {
				return true
			}
		}
	}
	return false
}

// indexes yields the index of every c in s.
func indexes(s string, c byte) iter.Seq[int] {
	return func(yield func(int) bool) {
		for off := 0; ; {
			j := strings.IndexByte(s[off:], c)
			if j < 0 || !yield(off+j) {
				return
			}
			off += j + 1
		}
	}
}

// hasFoldPrefix is strings.HasPrefix under ASCII case folding.
func hasFoldPrefix(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
