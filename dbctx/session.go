package dbctx

import (
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// A Scope and the connection it pins are kept apart as database/sql keeps
// its Conn apart from the driverConn under it: the Scope holds what lasts
// as long as the unit of work (the pool, the slot, the nesting of Do and
// Atomic, the watch of its context), a session what lasts as long as the
// physical connection and what the scope now pinning it has done to it.
//
// session is what a Pool knows of one physical connection. For pgx's
// stdlib driver it is kept in the connection's CustomData, so it lives as
// long as the connection, across scopes and database/sql's pool: what the
// health check looks at, and what dbscope itself left in the session for
// the next user (settings it applied, a reset it owes; see prefix.go).
// For another driver it is made at each pin and holds the pin alone.
type session struct {
	// Fixed for the connection's life.
	px    *pgx.Conn                  // nil for another driver
	pc    *pgconn.PgConn             // px's
	fd    int                        // -1: cannot be looked into
	plain bool                       // no TLS: the first byte waiting is a message type
	auth  string                     // the session user the server reported first (see changed)
	enc   string                     // the client_encoding it reported first (see Scope.giveBack)
	read  [len(parseReported)]string // the settings of parseReported as it reported them first (see readChanged)
	mode  pgx.QueryExecMode
	qt    pgx.QueryTracer // the config's tracer, told of what pgx does not see (observe.go)

	eqb pgx.ExtendedQueryBuilder // for the prefixed statements (exec.go)

	released time.Duration // monotonic(): last given back by a scope; 0: never

	// What dbscope left in the session, paid for by the next statement
	// that runs on it (prefix.go), or before the connection goes back to
	// the *sql.DB (clean.go).
	applied  []setting // session-level settings applied, by name
	resetDue bool      // an earlier scope left state: reset before anything runs
	sweepDue bool      // and the reset deallocates statements PREPAREd in SQL
	apart    bool      // and code apart from DML's own ran (pin.codeApart): its check goes unnamed
	seqOnly  bool      // and the reset is DISCARD SEQUENCES alone: writes left only sequence state (Options.PlainWrites)
	dropDue  bool      // a statement of the scope changed how names resolve or text is read (kindResolve), or deallocated what is kept prepared (kindPoison: DISCARD ALL, DEALLOCATE): statements pgx and dbscope keep prepared are dropped before the next (Scope.execLocked)
	setDue   bool      // and settings were set in view (SET, set_config) or names resolved otherwise (kindResolve): the reset takes a transaction of its own (prefix.go) and goes before a statement not yet described (exec.go)
	descs    descCache // statement descriptions, for the prefixed database/sql queries

	// The statements prepared on the connection (pipe.go).
	prep   map[string]*pgconn.StatementDescription // a prefix's, by SQL
	named  int                                     // statements named so far
	stale  []string                                // named statements to deallocate
	reads  []pipeRead                              // what a pipeline sends back
	sds    []*pgconn.StatementDescription          // a prefix's, in order, while it is queued
	params [][]byte                                // a set_config's parameters
	pfx    prefix                                  // what is owed before the statement under way (prefix.go)
	rt     roundTrip                               // the round trip of a prefixed statement, its buffers kept (batch.go)
	fmts   []int16                                 // that statement's result formats (exec.go)
	qargs  []any                                   // the arguments of the database/sql query under way, its result formats first (exec.go)

	// What the connection's tracer is told (observe.go).
	send sending         // what PreludeOf returns, while a statement is sent
	tctx context.Context // the trace dbscope began of the statement under way, if any

	pin pin // the state of the scope that pins it now
}

// pin is what the scope that pins a connection has done to it: reset by
// one assignment at each pin, so nothing of an earlier scope remains.
type pin struct {
	conn     *sql.Conn
	taken    time.Duration // monotonic() when database/sql handed conn out
	pinnedAt time.Duration // monotonic() when pinned; only with ConnMaxAge > 0

	// seen collects the kinds of what ran on the connection (classify.go):
	// kindState makes the session dirty (reset before the next user),
	// kindCode sweeps SQL-prepared statements in that reset, kindPoison
	// closes the connection instead, kindBegin says a transaction was begun
	// in raw SQL (no retry; rolled back at the boundary).
	seen queryKind

	// codeApart is set where code ran that is not a DML statement's own
	// (kindCode without kindDML: DO, CALL, a function, what is not seen):
	// code that may have replaced the statements dbscope prepares on the
	// connection (DEALLOCATE dbscope_N; PREPARE dbscope_N AS …), so that
	// the reset's check of the statements PREPAREd in SQL goes unnamed
	// (see prefix.checkApart).
	codeApart bool

	// open counts the results handed out on the connection and not yet
	// closed (rows, batch results): a statement meanwhile is refused with
	// ErrConnBusy. Their Close runs on their own goroutine.
	open atomic.Int32

	// inFn is set while Scope.Pgx's fn holds the connection: a statement
	// of the scope meanwhile is refused (ErrConnBusy) rather than wait for
	// the connection's lock, which, from fn itself, it would do forever.
	inFn atomic.Bool

	bad       bool // a connection-level error seen while in a transaction
	badWhy    discardReason
	handedOut bool      // user code holds the connection itself: discarded at the boundary
	unseen    bool      // a handle runs statements the scope does not see (BeginTx's *sql.Tx, PrepareContext's *sql.Stmt): see blind
	unchecked bool      // pinned without the socket check (see Pool.check)
	used      bool      // a statement ran on it: none is retried
	resetBad  bool      // the reset owed before the first statement failed: the statement did not run, and the connection is not used again
	unsure    bool      // the session's settings may have changed unseen: apply them again (prefix.go)
	txUnsure  bool      // the transaction's may have: apply them again in it
	txSet     []setting // settings applied for the transaction under way (prefix.go)
	txNames   []string  // the names of every setting applied in it: what a rollback to a savepoint may put back

	open1 closer      // the result open (see open)
	txs   []openTx    // BeginTx's
	stmts []*sql.Stmt // PrepareContext's
	leak  *time.Timer // see leak.go
}

// openTx is a *sql.Tx of BeginTx, and the stop of the watch that rolls
// it back when its context ends (see Scope.beginSQL).
type openTx struct {
	tx   *sql.Tx
	stop func() bool
}

// see notes that a statement of kind k ran (or may have) on the
// connection.
func (p *pin) see(k queryKind) {
	p.seen |= k
	if k&kindCode != 0 && k&kindDML == 0 {
		p.codeApart = true
	}
}

// blind reports whether what the session's settings are is not known
// from what the scope ran: user code holds the connection, or a handle
// the scope handed out (a *sql.Tx, a *sql.Stmt) whose statements it does
// not see, which may set them (set_config, SET LOCAL), or put back earlier
// ones (ROLLBACK TO SAVEPOINT), at any time, until the boundary. Each
// statement of the scope then applies its settings again.
func (p *pin) blind() bool { return p.handedOut || p.unseen }

// openTx forgets BeginTx's transactions that have ended (Commit, Rollback,
// the watch of their context), and returns the last still open, or nil.
// Under s.mu.
func (c *session) openTx() *sql.Tx {
	p := &c.pin
	open := p.txs[:0]
	for _, t := range p.txs {
		if txDone(t.tx) {
			t.stop()
			if c.px == nil {
				// Settings applied at session level in it (prefixBlind)
				// went with a rollback, which put back the values
				// before it: every name applied, before it or in it,
				// may carry any value.
				c.applied = unknownSettings(c.pin.txHad(c.applied), nil)
			}
		} else {
			open = append(open, t)
		}
	}
	clear(p.txs[len(open):])
	p.txs = open
	if len(open) == 0 {
		return nil
	}
	return open[len(open)-1].tx
}

// txDone reports whether database/sql has ended tx, without a round trip
// (a *sql.Tx has no Done): Tx.StmtContext of a statement of no *sql.DB
// fails at once, with sql.ErrTxDone once tx has ended. It waits for a
// Commit or Rollback under way to close tx's rows.
func txDone(tx *sql.Tx) bool {
	return errors.Is(tx.StmtContext(context.Background(), new(sql.Stmt)).Close(), sql.ErrTxDone)
}

// forgetTxs forgets BeginTx's transactions, and stops their watches.
func (p *pin) forgetTxs() {
	for _, t := range p.txs {
		t.stop()
	}
	clear(p.txs)
	p.txs = p.txs[:0]
}

// shared reports whether user code holds a handle that drives the
// connection from any goroutine: a *sql.Tx or *sql.Stmt of the scope's,
// or the connection itself ([Scope.Conn], [Scope.Pgx]). database/sql and
// pgx's fn run under the connection's lock; what dbscope reads of pgconn's
// state is read under it too then (state). Without handles
// only the scope drives the connection, under s.mu, and its results under
// the open count.
func (c *session) shared() bool {
	return len(c.pin.txs) > 0 || len(c.pin.stmts) > 0 || c.pin.handedOut
}

// connState is what dbscope reads of pgconn's state.
type connState struct {
	tx     byte // the transaction status; 0 where the connection can no longer be reached
	closed bool // pgconn has closed the connection
	busy   bool // pgconn is still reading a result
}

// state reads pgconn's state (see shared). Not under the connection's
// lock.
func (c *session) state() connState {
	if !c.shared() {
		return stateOf(c.pc)
	}
	st := connState{closed: true}
	withLock(c.pin.conn, func() error { st = stateOf(c.pc); return nil })
	return st
}

func stateOf(pc *pgconn.PgConn) connState {
	return connState{tx: pc.TxStatus(), closed: pc.IsClosed(), busy: pc.IsBusy()}
}

// txOver forgets the settings of the transaction that ended.
func (p *pin) txOver() {
	p.txSet, p.txUnsure = nil, false
	p.txNames = p.txNames[:0]
}

// closer is a result a boundary closes: rows, batch results.
type closer interface{ abort() }

// dirty reports whether the session may hold state the next user must not
// see.
func (c *session) dirty() bool { return c.pin.seen&kindState != 0 }

// inRawTx reports whether a transaction was begun in raw SQL.
func (c *session) inRawTx() bool { return c.pin.seen&kindBegin != 0 }

const sessionKey = "github.com/dbscope/dbscope/dbctx.session"

// sessionOf returns the session of a pgx connection, made when first seen.
func sessionOf(sc *stdlib.Conn) *session {
	px := sc.Conn()
	pc := px.PgConn()
	data := pc.CustomData()
	if s, ok := data[sessionKey].(*session); ok {
		return s
	}
	cfg := px.Config()
	s := &session{px: px, pc: pc, fd: -1, plain: true, auth: pc.ParameterStatus(paramAuth),
		enc: pc.ParameterStatus(paramEncoding), mode: cfg.DefaultQueryExecMode}
	for i, n := range parseReported {
		s.read[i] = pc.ParameterStatus(n)
	}
	s.qt = cfg.Tracer
	nc := pc.Conn()
	if tc, ok := nc.(*tls.Conn); ok {
		nc, s.plain = tc.NetConn(), false
	}
	s.fd = fdOf(nc)
	if data != nil {
		data[sessionKey] = s
	}
	return s
}

// sessionOfDriver returns the session of a database/sql driver connection:
// pgx's kept one, or a fresh one for another driver.
func sessionOfDriver(driverConn any) *session {
	if sc, ok := driverConn.(*stdlib.Conn); ok {
		return sessionOf(sc)
	}
	return &session{fd: -1}
}

// fdOf returns the file descriptor under nc, or -1. The descriptor stays
// valid while pgx has not closed the connection, which check verifies
// before every use: pgx closes the socket only after marking itself closed.
func fdOf(nc net.Conn) int {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return -1
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return -1
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// parseReported are the settings that change how PostgreSQL reads a
// statement's text or constants and that it reports to the client
// whenever they change (GUC_REPORT): compared at the give-back of a dirty
// scope, without a round trip, they tell a change that code the
// classifier does not see made and left in force (a function's or a
// trigger's set_config, a SET through a handed-out *sql.Tx): the
// statements prepared under it are dropped (see Scope.giveBack). One
// made for a transaction alone (SET LOCAL in code) is over by then, and
// not told.
var parseReported = [...]string{"DateStyle", "IntervalStyle", "TimeZone", "standard_conforming_strings"}

// readChanged reports whether a setting of parseReported differs from
// what the server reported first; not one a unit declared ([NewSetting]:
// dbscope applied it, and its caveat is documented there).
func (c *session) readChanged() bool {
	for i, n := range parseReported {
		if c.pc.ParameterStatus(n) != c.read[i] && !c.declares(n) {
			return true
		}
	}
	return false
}

// declares reports whether name is among the settings applied for units
// that declared them.
func (c *session) declares(name string) bool {
	for _, st := range c.applied {
		if strings.EqualFold(st.name, name) {
			return true
		}
	}
	return false
}

// paramAuth is the session user, which the server reports to the client
// whenever it changes (GUC_REPORT): compared at every give-back, without
// a round trip, it catches a change of user the classifier did not see
// (a view that calls set_config('session_authorization', …)). Each
// parameter compared costs a map lookup per give-back, so only the one
// whose leak is a privilege escalation is compared.
const paramAuth = "session_authorization"

// paramEncoding is the client encoding, which the server reports too
// (pgx asks for UTF8 at startup).
const paramEncoding = "client_encoding"

// changed reports whether the session runs as another user than when
// first seen.
func (c *session) changed() bool { return c.pc != nil && c.pc.ParameterStatus(paramAuth) != c.auth }
