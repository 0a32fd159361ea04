package dbctx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// One path for every statement.
//
// Every statement method of the Scope, database/sql's and pgx's, goes
// through exec: under the scope's lock (goroutines of one unit of work run
// their statements one after another), it refuses what transaction pooling
// cannot carry, pins a connection (slot, health check), refuses while a
// result of an earlier statement is still open, begins Atomic's
// transaction, notes what the statement may leave in the session, works
// out what is owed before it (prefix.go), runs it — again on a fresh
// connection where that provably changes nothing (retry.go) — and times it.

// stmt is a statement as exec sees it.
type stmt struct {
	query string
	args  []any
	kind  queryKind
	how   how
	tx    txMove // where kind has kindAlone: whether it ends or begins a transaction in SQL (a batch's, set by SendBatch)
	n     int    // the statements it is, for Timing, where more than one (a batch's queries)
}

// count returns the statements st is, for Timing.
func (st *stmt) count() int { return max(st.n, 1) }

// txMove is what transaction control in SQL does to the transaction
// (txControlOf).
type txMove uint8

const (
	txUnread txMove = iota // not read yet
	txNone                 // neither begins nor ends one
	txOpen                 // leaves one open: BEGIN, START TRANSACTION, COMMIT AND CHAIN
	txClosed               // ends it: COMMIT, ROLLBACK, PREPARE TRANSACTION…
)

// txMoveOf returns what st does to the transaction, reading its text
// where it may be transaction control.
func (st *stmt) txMoveOf() txMove {
	if st.tx == txUnread {
		st.tx = txNone
		if st.kind&kindAlone != 0 && st.query != "" {
			st.tx = txControlOf(st.query)
		}
	}
	return st.tx
}

// how a statement runs.
type how uint16

const (
	viaPgx     how = 1 << iota // pgx's interface: needs pgx's driver
	alone                      // cannot share its round trip with a prefix
	rows                       // leaves rows open: Atomic's BEGIN is not pipelined with it
	noRetry                    // never run again (its input may have been read)
	notQuiet                   // runs with its own context (see stmtCtx)
	txControl                  // transaction control alone: needs no settings (see needsNoSettings)
	spliced                    // pgx's simple protocol would put an argument where PostgreSQL reads no placeholder (see splicedElsewhere)
	simpleCall                 // run with pgx.QueryExecModeSimpleProtocol among its arguments
	opensTx                    // BeginTx's BEGIN: its outcome is never unknown, nothing of it commits
)

// runner runs a statement on the pinned connection c, after p (nil where
// nothing is owed), and records what p left (prefixDone), at once or when
// its results are finished.
type runner func(ctx context.Context, c *session, p *prefix) error

// exec is the one path. See above.
func (s *Scope) exec(ctx context.Context, st *stmt, run runner) error {
	if s == nil {
		return ErrNoScope
	}
	start := monotonic()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.x != nil && s.x.gate != nil {
		if err := s.waitGate(ctx); err != nil {
			s.account(start, st.count())
			return err
		}
	}
	if s.atomic > 0 && s.pool.opts.OnBegin != nil && !s.x.begun && s.x.beginErr == nil {
		// OnBegin runs statements through the scope: not under s.mu
		// (taken again however beginAlone ends, for the deferred unlock).
		// The gate, opened before the lock is let go, holds the
		// statements of the unit's other goroutines until it has run.
		g := s.openGate()
		func() {
			s.mu.Unlock()
			defer s.mu.Lock()
			ran := false
			defer func() { s.closeGate(g, ran) }()
			s.beginAlone(ctx, g)
			ran = true
		}()
	}
	if s.atomic > 0 && len(s.x.due) > 0 {
		if err := s.sendSavepoints(ctx); err != nil {
			s.account(start, st.count())
			return err
		}
	}
	err := s.execLocked(ctx, st, run)
	s.account(start, st.count())
	return err
}

func (s *Scope) execLocked(ctx context.Context, st *stmt, run runner) error {
	if s.pool.opts.TransactionPooling && st.kind&(kindSession|kindSeqRead) != 0 {
		return sessionStateError(st.query)
	}
	if s.atomic > 0 && st.txMoveOf() != txNone {
		return fmt.Errorf("%w: %s", ErrInAtomic, describeStmt(st))
	}
	c, err := s.pinned(ctx)
	if err != nil {
		return err
	}
	if st.how&spliced != 0 && s.pool.opts.TransactionPooling && c.px != nil && (st.how&simpleCall != 0 || c.mode == pgx.QueryExecModeSimpleProtocol) {
		return fmt.Errorf("%w: %s: pgx's simple protocol would put an argument where PostgreSQL reads no placeholder (in a string, a comment or a name), "+
			"where its text would run as SQL; write the text so that both read it alike (a space between a name and a quote after it, no $ in a name)",
			ErrSessionState, describeStmt(st))
	}
	if st.how&noRetry != 0 && c.pin.unchecked {
		// Never run again once sent (a batch, COPY): not sent to a
		// connection that a look would have found dead.
		if c, err = s.lookedAt(ctx); err != nil {
			return err
		}
	}
	if (c.pin.seen|st.kind)&kindPathLate != 0 || s.pool.pathLate.Load() {
		// After a search_path that puts pg_catalog after a schema of the
		// user's (or in the same string, or in the connection string:
		// see checkConfig), what the statement names may be the user's
		// code.
		st.kind |= kindState | kindCode
	}
	if st.how&viaPgx != 0 && c.px == nil {
		return fmt.Errorf("dbctx: Scope's pgx methods: %w", errNotPgx)
	}
	if c.pin.open.Load() > 0 {
		return errRowsOpen
	}
	if c.pin.inFn.Load() {
		return errInPgxFn
	}
	if c.pc != nil && c.shared() && c.state().busy {
		// Rows of what the scope handed out are open: pgx would say
		// "conn busy".
		return errHandleRowsOpen
	}
	if s.txEndedUnder() {
		// Run now, it would run on its own, outside what Atomic commits
		// or rolls back.
		s.x.failed = true
		return errTxEndedUnder
	}
	begin, err := s.beginning()
	if err != nil {
		return err
	}
	first := !c.pin.used
	if c.dropDue && c.state().tx != 'E' {
		// A statement pgx prepared before (in an earlier scope, or this
		// one) would run as read then: under another scope's DateStyle,
		// or reaching a table the scope's temporary one now hides. (Not
		// in a failed transaction, which would refuse it: after its
		// ROLLBACK, or ROLLBACK TO, which undoes the change anyway.)
		if err := s.pool.dropStatements(ctx, c); err != nil {
			return err
		}
		c.dropDue = false
	}
	p, err := s.owed(ctx, c, st, begin)
	open := false // c's pgx connection was open as the statement went: see retryable
	if err == nil {
		// Noted before it runs: failing or not, it may leave state.
		c.pin.see(st.kind)
		open = c.open()
		err = run(s.stmtCtx(ctx, st.how), c, p)
	}
	if err != nil && c.px == nil && errors.Is(err, sql.ErrTxDone) {
		// BeginTx's transaction, which the statement and its settings
		// run in on another driver (see sqlOn), ended meanwhile (a
		// Commit on another goroutine): nothing more was sent. Again,
		// with the settings, outside it.
		if p, err = s.owed(ctx, c, st, begin); err == nil {
			c.pin.seen |= st.kind
			open = c.open()
			err = run(s.stmtCtx(ctx, st.how), c, p)
		}
	}
	retries := maxRetries
	if c.pin.unchecked {
		// One more for a connection pinned without the socket check,
		// which would have found it dead (see Pool.check).
		retries++
	}
	for try := 0; err != nil && try < retries && st.how&noRetry == 0 && s.retryable(ctx, c, st.kind, err, first, open); try++ {
		if c, err = s.repin(ctx, err); err != nil {
			// No connection to run it again on: that is the news (the
			// database is down: ErrUnavailable).
			break
		}
		if p, err = s.owed(ctx, c, st, begin); err == nil {
			c.pin.see(st.kind)
			open = c.open()
			err = run(s.stmtCtx(ctx, st.how), c, p)
		}
	}
	if err != nil && st.how&noRetry == 0 && s.replannable(ctx, st.kind, err) {
		// Once, on the same connection: pgx has dropped the statement.
		// A reset still owed (it shared the refused statement's
		// transaction) goes first, alone, so that the statement is
		// described after it (see pgxQuery).
		c = s.c
		c.setDue = c.setDue || c.resetDue
		if p, err = s.owed(ctx, c, st, begin); err == nil {
			c.pin.see(st.kind)
			err = run(s.stmtCtx(ctx, st.how), c, p)
		}
	}
	unknown := err != nil && st.how&opensTx == 0 && s.outcomeUnknown(ctx, c, err, open)
	err = s.observe(ctx, err, first)
	if unknown {
		s.pool.c.outcomesUnknown.Add(1)
		err = fmt.Errorf("%w: %w", errOutcomeUnknown, err)
	}
	if err != nil && s.atomic > 0 {
		s.x.failed = true
	}
	if c := s.c; c != nil {
		if (err == nil && st.kind&kindResolve != 0 || st.kind&kindPoison != 0) && c.px != nil && !s.pool.opts.TransactionPooling {
			// (A statement that failed changed nothing that outlives its
			// transaction's rollback; but DISCARD ALL or DEALLOCATE, in a
			// string whose later statement failed, deallocated what pgx
			// and dbscope keep prepared all the same: the statements
			// after it would fail, the first twice over, where both
			// named one of their own.)
			c.dropDue = true
		}
		// A transaction begun or ended in SQL. (BeginTx's BEGIN is not
		// read so: database/sql ends it, and keeps its own count.)
		switch st.txMoveOf() {
		case txOpen:
			c.pin.see(kindBegin)
		case txClosed:
			c.pin.seen &^= kindBegin
		}
		c.pin.used = true
		if st.kind&kindTaints != 0 {
			// It may have changed settings, or ended the transaction
			// they were set for: apply them again.
			c.pin.unsure, c.pin.txUnsure = true, true
		}
	}
	return err
}

// kindTaints is what a statement may do that changes the settings dbscope
// applied, or ends the transaction they were applied for.
const kindTaints = kindSession | kindCode | kindBegin | kindAlone | kindTxSet

// owed returns what must run before st on c in the same round trip, or
// runs it first, alone, where st cannot share its round trip.
func (s *Scope) owed(ctx context.Context, c *session, st *stmt, begin bool) (*prefix, error) {
	if st.kind&kindOnce != 0 && settingsInPlay(ctx, c) && endsBefore(st.query, true) {
		return nil, errEndsTxBefore
	}
	inTx := s.inTx(c)
	p, err := s.prefixFor(ctx, c, inTx, begin)
	if err != nil || p.empty() {
		return nil, err
	}
	if len(p.set) > 0 && (st.how&txControl != 0 || needsNoSettings(st.query)) {
		// Transaction control runs nothing that reads them, and SET
		// TRANSACTION must come first in its transaction: the
		// settings go with the next statement.
		p.set, p.keep = nil, false
		if p.empty() {
			return nil, nil
		}
	}
	share := c.px != nil && st.how&alone == 0 && st.kind&kindAlone == 0 && !(p.begin && st.how&rows != 0)
	if share {
		// prefixDone may run after the statement's results are read,
		// after execLocked marked the settings unsure: it must leave
		// them so.
		p.taints = st.kind&kindTaints != 0
		return p, nil
	}
	if s.pool.localSettings() && !inTx && !p.begin && len(p.set) > 0 {
		// Transaction-local settings end with the round trip that sets
		// them: behind a pooler the statement would run on whichever
		// server connection comes next, without them.
		return nil, fmt.Errorf("%w: %s cannot share a transaction with the settings its context declares; run it inside Atomic",
			ErrSessionState, describeStmt(st))
	}
	return nil, s.flush(ctx, c, p)
}

// beginning reports whether Atomic's transaction is yet to begin: it
// begins with the statement, in its round trip where it can (prefix.go).
func (s *Scope) beginning() (bool, error) {
	if s.atomic == 0 {
		return false, nil
	}
	if err := s.x.beginErr; err != nil {
		return false, err
	}
	return !s.x.begun, nil
}

// inTx reports whether c is, or may be, in a transaction: on pgx's
// driver as the server last said (its ReadyForQuery, after every
// statement), elsewhere as the scope's statements, and database/sql's
// bookkeeping of BeginTx's transactions, say.
func (s *Scope) inTx(c *session) bool {
	if s.atomicTxOpen() {
		return true
	}
	if c.pc != nil {
		return c.state().tx != 'I'
	}
	return c.inRawTx() || c.openTx() != nil
}

// kindOf returns what a statement run with args may do to the session:
// its text's kind (classify.go), or unknown where args make pgx run
// another text than the one classified.
func (s *Scope) kindOf(query string, args []any) (queryKind, how) {
	var h how
	text, rewritten, unknown, values := query, false, false, false
	mode := pgx.QueryExecModeSimpleProtocol // or the connection's; another given with the call
options:
	for i, a := range args {
		if na, ok := a.(sql.NamedArg); ok {
			// database/sql's, whose value pgx's stdlib hands on as
			// the argument: an option, if it is one.
			a = na.Value
		}
		// pgx reads options from the front of the arguments.
		switch a := a.(type) {
		case pgx.NamedArgs, pgx.StrictNamedArgs:
			// They replace @name with $n, which may change how the
			// text around reads ($@a becomes $$1, a dollar quote): the
			// text that runs is read, as pgx rewrites it. The prefixed
			// statements do not read them.
			var err error
			text, _, err = a.(pgx.QueryRewriter).RewriteQuery(context.Background(), nil, query, args[i+1:])
			unknown = unknown || err != nil // pgx refuses it too
			rewritten, values = true, true
			h |= alone
		case pgx.QueryRewriter:
			// The text that runs is not the text classified.
			unknown = true
			h |= alone
		case pgx.QueryExecMode:
			h |= alone
			if a == pgx.QueryExecModeSimpleProtocol {
				h |= simpleCall
			} else {
				mode = a
			}
		case pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			h |= alone
		default:
			values = true
			break options
		}
	}
	var k queryKind
	var stray bool
	if rewritten {
		k, stray = readQuery(text) // a text of its own each time: not kept
	} else {
		k, stray = s.pool.notes.read(query)
	}
	if stray && values && mode == pgx.QueryExecModeSimpleProtocol {
		// pgx's simple protocol puts the arguments into the text where
		// its reading finds placeholders: one where PostgreSQL reads
		// none may end the string it is put in (see splicedElsewhere),
		// and what an argument holds is not read here. Reset after it;
		// under TransactionPooling, refused on a connection in that mode.
		unknown = true
		h |= spliced
	}
	if k&kindDML != 0 && s.pool.opts.PlainWrites {
		// Its table's code leaves nothing, the user says: only its
		// sequence values (see Options.PlainWrites).
		k = k&^(kindState|kindCode) | kindSeq
	}
	if unknown {
		k = k&^kindDML | kindUnknown
	}
	return k, h
}

// guardRewriters returns args with each pgx.QueryRewriter of the user's
// among its leading options (not pgx's named arguments, whose text is
// read before it runs) wrapped so that, under TransactionPooling, the
// text it rewrites to is read when pgx runs it, before anything of it is
// sent, and refused with ErrSessionState where it sets session state or
// reads sequence state: kindOf cannot read it (the rewriter is handed
// the connection), and takes it for kindUnknown, which transaction
// pooling does not refuse. args itself is not changed.
func (s *Scope) guardRewriters(args []any) []any {
	if s == nil || !s.pool.opts.TransactionPooling {
		return args
	}
	var out []any
	for i, a := range args {
		na, named := a.(sql.NamedArg)
		if named {
			a = na.Value
		}
		switch rw := a.(type) {
		case pgx.NamedArgs, pgx.StrictNamedArgs, guardedRewriter:
			continue
		case pgx.QueryRewriter:
			if out == nil {
				out = append([]any(nil), args...)
			}
			var g any = guardedRewriter{rw}
			if named {
				na.Value = g
				g = na
			}
			out[i] = g
			continue
		case pgx.QueryExecMode, pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
			continue
		}
		break
	}
	if out == nil {
		return args
	}
	return out
}

// guardedRewriter is a user's pgx.QueryRewriter under TransactionPooling
// (see guardRewriters).
type guardedRewriter struct{ rw pgx.QueryRewriter }

func (g guardedRewriter) RewriteQuery(ctx context.Context, conn *pgx.Conn, sql string, args []any) (string, []any, error) {
	sql, args, err := g.rw.RewriteQuery(ctx, conn, sql, args)
	if err == nil && classify(sql)&(kindSession|kindSeqRead) != 0 {
		return "", nil, sessionStateError(sql)
	}
	return sql, args, err
}

// sessionStateError is ErrSessionState for query.
func sessionStateError(query string) error {
	return fmt.Errorf("%w: %q", ErrSessionState, shorten(query))
}

func describeStmt(st *stmt) string {
	if st.query == "" {
		return "this statement"
	}
	return fmt.Sprintf("%q", shorten(st.query))
}

func shorten(query string) string {
	const max = 80
	q := strings.Join(strings.Fields(query), " ")
	if len(q) > max {
		q = q[:max] + "…"
	}
	return q
}

// endsBefore reports whether one of the statements of query ends a
// transaction, or rolls back to a savepoint (which puts back the settings
// the transaction had then), before another statement of query; last says
// query is the last of its batch. A text the lexer cannot read ends
// nothing here (PostgreSQL refuses it). Read every way PostgreSQL may
// read it (see readings), it is true where one reading says so.
func endsBefore(query string, last bool) bool {
	found := false
	readings(query, func(l lexer) bool {
		ends, before := false, false
		ok := eachStmt(l, func(w [3]token, _ bool) bool {
			if ends {
				before = true // a statement after one that ends
				return false
			}
			first := w[0]
			ends = first.is("commit") || first.is("end") || first.is("rollback") || first.is("abort") ||
				first.is("prepare") && w[1].is("transaction") && w[2].kind == tString
			return true
		})
		found = before || ok && ends && !last
		return !found
	})
	return found
}

// txControlOf reads query's statements for transaction control in SQL
// and returns what the last that begins or ends a transaction leaves:
// txOpen, txClosed, or txNone where none does. A ROLLBACK TO a savepoint,
// COMMIT PREPARED and ROLLBACK PREPARED (which PostgreSQL runs outside
// transactions only) neither begin nor end the session's. Where the ways
// PostgreSQL may read query (see readings) differ, one that finds
// transaction control is taken.
func txControlOf(query string) txMove {
	move := txNone
	readings(query, func(l lexer) bool {
		m := txNone
		eachStmt(l, func(w [3]token, chain bool) bool {
			if mm := txMoveOfStmt(w, chain); mm != txNone {
				m = mm
			}
			return true
		})
		if m != txNone {
			move = m
		}
		return move == txNone
	})
	return move
}

// eachStmt calls fn with the first tokens of each statement l reads, in
// order, and whether it ends AND CHAIN (not AND NO CHAIN), until fn
// returns false. The statements of a routine's body (CREATE [OR REPLACE]
// FUNCTION or PROCEDURE … BEGIN ATOMIC …; END) are the CREATE's, not
// statements of their own. It reports whether it read to the end: false
// where fn stopped it or the lexer could not read on.
func eachStmt(l lexer, fn func(w [3]token, chain bool) bool) bool {
	var w [3]token // the statement's first tokens
	var prev token
	n, depth, chain, routine, body := 0, 0, false, false, 0
	for {
		t := l.next()
		if t.kind != tEOF && t.kind != tBad && t.kind != tSemi {
			if n < len(w) {
				w[n] = t
			}
			switch {
			case t.kind == tLParen:
				depth++
			case t.kind == tRParen:
				depth--
			case t.is("chain"):
				chain = !prev.is("no")
			case n == 1, n == 3 && w[1].is("or") && w[2].is("replace"):
				// CREATE FUNCTION, CREATE OR REPLACE PROCEDURE, …
				routine = w[0].is("create") && (t.is("function") || t.is("procedure"))
			case t.is("atomic") && prev.is("begin") && depth == 0 && routine && body == 0:
				body++ // a body of statements, up to its END
			case t.is("end") && prev.is("atomic") && body > 0 && depth == 0:
				body-- // an empty body: BEGIN ATOMIC END
			}
			prev = t
			n++
			continue
		}
		switch {
		case body > 0 && n > 0 && w[0].is("end"):
			body--
		case body > 0:
		case n > 0:
			if !fn(w, chain) {
				return false
			}
		}
		if t.kind != tSemi {
			return t.kind == tEOF
		}
		w, prev, n, depth, chain = [3]token{}, token{}, 0, 0, false
		if body == 0 {
			routine = false
		}
	}
}

// txMoveOfStmt is txControlOf for one statement, of first tokens w; chain
// says it ends AND CHAIN.
func txMoveOfStmt(w [3]token, chain bool) txMove {
	switch first := w[0]; {
	case first.is("begin"):
		return txOpen
	case first.is("start"):
		if w[1].is("transaction") {
			return txOpen
		}
	case first.is("prepare"):
		if w[1].is("transaction") && w[2].kind == tString {
			return txClosed
		}
	case first.is("commit") || first.is("end") || first.is("rollback") || first.is("abort"):
		if w[1].is("prepared") || w[1].is("to") || (w[1].is("work") || w[1].is("transaction")) && w[2].is("to") {
			return txNone
		}
		if chain {
			return txOpen
		}
		return txClosed
	}
	return txNone
}

// needsNoSettings reports whether query is one transaction-control
// statement, which needs no settings of its own, or SET TRANSACTION, which
// must be the first statement of its transaction.
func needsNoSettings(query string) bool {
	l := lexer{q: query}
	t := l.next()
	if t.kind != tWord || t.text == "" {
		return false
	}
	// By first letter: most statements are told at a compare or two.
	var tc bool // transaction control
	switch t.text[0] | 0x20 {
	case 'a':
		tc = t.is("abort")
	case 'b':
		tc = t.is("begin")
	case 'c':
		tc = t.is("commit")
	case 'e':
		tc = t.is("end")
	case 'r':
		tc = t.is("rollback") || t.is("release")
	case 's':
		tc = t.is("start") || t.is("savepoint")
	}
	switch {
	case tc:
	case t.is("set"):
		// SET TRANSACTION ISOLATION LEVEL …, not SET transaction.x = ….
		if !l.next().is("transaction") || l.next().kind != tWord {
			return false
		}
	default:
		return false
	}
	for {
		switch l.next().kind {
		case tEOF:
			return true
		case tSemi, tBad:
			return false
		}
	}
}
