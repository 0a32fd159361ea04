package dbctx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unsafe"

	"github.com/jackc/pgx/v5"
)

// What must run on a connection before a statement, in the statement's own
// network round trip.
//
// Three things can be owed before a statement runs on a pgx connection:
// the reset of the session that an earlier scope left dirty (the reset is
// not run when that scope gives the connection back, but by whoever uses
// the connection next), the BEGIN of an Atomic that begins with this
// statement, and the settings the statement's context declares
// (settings.go) where the session does not carry them already. They are
// queued before the statement and sent with it before one Sync: the
// extended protocol runs everything up to a Sync in one implicit
// transaction, so if any of them fails the statement does not run, and
// behind PgBouncer they all land on one server connection.
//
// Settings are applied at session level (set_config(…, false)) outside a
// transaction on a direct connection, and skipped while the session
// carries the same values; transaction-locally (set_config(…, true)) in a
// transaction and under TransactionPooling, where nothing may outlive the
// transaction. A session-level set_config in the implicit transaction of a
// statement that fails is rolled back with it, so what the session carries
// is always known: session.applied.

// prefix is what is owed before one statement.
type prefix struct {
	reset, sweep bool      // run the reset of an earlier scope first (and sweep prepared statements)
	seqOnly      bool      // the reset is DISCARD SEQUENCES alone (Options.PlainWrites)
	check        bool      // sweep by a check first, the full sweep only where it fails (pipe.go)
	checkApart   bool      // code apart from DML's own ran: the check goes unnamed (see prefix.unnamed)
	shareTx      bool      // the reset may share the statement's transaction, if check (ownTx)
	begin        bool      // begin Atomic's transaction
	set          []setting // set_config calls, in order
	local        bool      // set_config(…, true)
	carry        []setting // what the session, or the transaction, carries afterwards
	keep         bool      // carry is kept: in session.applied (local false) or pin.txSet
	taints       bool      // the statement after it may change the settings (see owed)
}

// newPrefix returns p in c's own prefix: what is owed before one
// statement at a time, from prefixFor until prefixDone (there is one
// statement at a time on a connection: another is refused while its
// results are open).
func (c *session) newPrefix(p prefix) *prefix {
	c.pfx = p
	return &c.pfx
}

func (p *prefix) empty() bool { return p == nil || !p.reset && !p.begin && len(p.set) == 0 }

// resetLen is the number of p's statements up to the end of its reset
// (see prefixStatements).
func (pl *Pool) resetLen(p *prefix) int {
	if !p.reset {
		return 0
	}
	if p.seqOnly {
		return 1
	}
	n := len(pl.resetStmts)
	if p.ownTx() {
		n += 2
	}
	if p.sweep {
		n++
	}
	return n
}

// ownTx reports whether p's reset goes in a transaction of its own
// (BEGIN … COMMIT) rather than in the implicit transaction of what
// follows it up to the Sync (see prefixStatements): unless the sweep's
// check goes first, in its form that also finds a channel listened on,
// and Atomic does not begin. That form is used where the check is a
// statement prepared once on the connection (Pool.named): PostgreSQL
// plans its subquery once, where unnamed it would cost more than the
// BEGIN and COMMIT it saves.
func (p *prefix) ownTx() bool { return !p.seqOnly && (p.begin || !p.check || !p.shareTx) }

// all is prefixDone's reached for a prefix every statement of which ran.
const all = int(^uint(0) >> 1)

// prefixFor returns what is owed on c before a statement run with ctx,
// or nil. inTx says the connection is in a transaction; begin that the
// statement begins Atomic's.
func (s *Scope) prefixFor(ctx context.Context, c *session, inTx, begin bool) (*prefix, error) {
	want := settingsOf(ctx)
	for _, st := range want {
		if strings.IndexByte(st.value, 0) >= 0 {
			return nil, fmt.Errorf("%w: %s", ErrSettingValue, st.name)
		}
		if st.late {
			// The statement's built-ins may be a user's code.
			c.pin.see(kindState | kindCode)
		}
		if st.name == "search_path" && s.pool.localSettings() && (containsFold(st.value, "pg_temp") || containsFold(st.value, "pg_toast_temp")) {
			return nil, fmt.Errorf("%w: a search_path naming pg_temp, under which a CREATE makes a temporary table that outlives the transaction on the pooler's server connection", ErrSessionState)
		}
	}
	if !inTx && !begin {
		c.pin.txOver() // the transaction they were set for is over
	}
	var p *prefix
	if c.px == nil && (len(c.pin.txs) > 0 || s.atomicTxOpen() && c.pin.blind()) && !begin && !s.pool.localSettings() {
		// (Atomic's transaction, on a connection user code holds: what
		// it ran there may have ended it, and transaction-local
		// settings, which go in a round trip of their own here, would
		// end with the next implicit one.)
		p = s.prefixBlind(c, want, c.resetDue)
	} else if inTx || begin || s.pool.localSettings() {
		p = s.prefixTx(c, want, c.resetDue, inTx, begin)
	} else {
		p = s.prefixSession(c, want, c.resetDue)
	}
	if p != nil && len(p.set) > 1 || p != nil && len(p.set) == 1 && p.set[0].name != "role" {
		p.set = roleAround(p.set, want)
	}
	if p != nil && p.reset && c.seqOnly {
		p.seqOnly, p.sweep = true, false
	}
	if p != nil && p.sweep && c.px != nil && c.mode != pgx.QueryExecModeSimpleProtocol {
		p.check, p.checkApart = true, c.apart
		// Not after settings set in view (SET, set_config): they may be
		// the transaction defaults (default_transaction_read_only, …),
		// under which a shared transaction would begin.
		p.shareTx = s.pool.named(c) && !c.setDue
	}
	return p, nil
}

// prefixSession is prefixFor outside a transaction on a direct connection:
// settings at session level, where the session does not carry them.
func (s *Scope) prefixSession(c *session, want []setting, reset bool) *prefix {
	base := c.applied
	if reset && !c.seqOnly {
		base = nil // the reset clears what was applied
	}
	same := !c.pin.unsure && !c.pin.blind() && sameSettings(base, want)
	if !reset && same {
		return nil
	}
	p := c.newPrefix(prefix{reset: reset, sweep: reset && c.sweepDue, carry: want, keep: true})
	if !same {
		p.set = withResets(want, base)
	}
	if !reset && len(p.set) == 0 {
		return nil
	}
	return p
}

// prefixBlind is prefixFor on another driver while a *sql.Tx of BeginTx
// is open, as database/sql sees it, or Atomic's transaction while user
// code holds the connection (Scope.Conn, PrepareContext): the scope sees
// none of what runs in it, and the server's transaction status is not
// known (SQL run through the *sql.Tx, or on the connection, may have
// ended the transaction). The settings go at session
// level, which holds whether a transaction is open or not (a rollback
// puts back the values before it: the session's are unknown from then
// on, see session.openTx), before every statement.
func (s *Scope) prefixBlind(c *session, want []setting, reset bool) *prefix {
	p := c.newPrefix(prefix{reset: reset, sweep: reset && c.sweepDue, carry: want, keep: true})
	p.set = withResets(want, unknownSettings(c.pin.txHad(c.applied), want))
	if !reset && len(p.set) == 0 {
		return nil
	}
	return p
}

// prefixTx is prefixFor inside a transaction (or one Atomic begins now),
// and under TransactionPooling: settings transaction-local, where the
// transaction does not carry them.
func (s *Scope) prefixTx(c *session, want []setting, reset, inTx, begin bool) *prefix {
	tp := s.pool.localSettings()
	p := c.newPrefix(prefix{reset: reset, sweep: reset && c.sweepDue, begin: begin, local: true, carry: want})
	switch {
	case tp && !inTx && !begin:
		// Outside a transaction behind a pooler: every statement's
		// implicit transaction gets them anew.
		p.set = want
	case c.pin.txSet != nil && !c.pin.txUnsure && !c.pin.blind() && !reset:
		if sameSettings(c.pin.txSet, want) {
			p.set = nil
		} else {
			p.set = withResets(want, c.pin.txSet)
		}
		p.keep = true
	default:
		// The transaction sees the session's values: those applied
		// (unless reset first), which the settings override or clear.
		base := c.applied
		if reset && !c.seqOnly || tp {
			base = nil
		}
		if !reset && !c.pin.unsure && !c.pin.txUnsure && !c.pin.blind() && sameSettings(base, want) {
			p.set = nil
		} else {
			// Unsure, the transaction may hold any value it was
			// given (a rollback to a savepoint puts back the one
			// before it): clear every name it was given.
			p.set = withResets(want, c.pin.txHad(base))
		}
		p.keep = true
	}
	if p.empty() {
		if p.keep && c.pin.txSet == nil {
			c.pin.txSet = want
		}
		return nil
	}
	return p
}

// roleAround returns set, the set_config calls of a prefix, in an order
// where none runs under a role a unit declared: where set changes the
// role, or the session carries one a unit declared (want, the settings
// of the statement's context, names it), the role is reset first, the
// others applied, and want's role set last. PostgreSQL checks the right
// to set a parameter (a superuser's, or one GRANT SET ON PARAMETER
// gives) against the current role: applied under a role that lacks it,
// one that the login may set failed, and so did clearing it for the next
// unit, on that connection for good. set itself is not changed.
func roleAround(set, want []setting) []setting {
	isRole := func(st setting) bool { return st.name == "role" }
	at, wantAt := slices.IndexFunc(set, isRole), slices.IndexFunc(want, isRole)
	if at < 0 && wantAt < 0 {
		return set
	}
	out := make([]setting, 0, len(set)+2)
	// Where set changes the role, the role's last call is that change;
	// the calls that only put back what the session carries are marked
	// so (pathAlone: nothing to describe anew for them).
	changes := at >= 0
	out = append(out, setting{name: "role", reset: true, around: changes && wantAt >= 0 || !changes})
	for _, st := range set {
		if !isRole(st) {
			out = append(out, st)
		}
	}
	if wantAt >= 0 {
		w := want[wantAt]
		w.around = !changes
		out = append(out, w)
	}
	return out
}

// errEndsTxBefore refuses a batch, or a string of several statements,
// that would run a statement after the end of the transaction (or a
// rollback to a savepoint) that the settings it carries were set for.
var errEndsTxBefore = errors.New("dbctx: a batch or string that ends its transaction, or rolls back to a savepoint, before another of its statements cannot carry the settings of its context to that statement: run the statements after it on their own")

// settingsInPlay reports whether the settings a statement run with ctx on
// c sees are dbscope's to keep: its context declares some, or the session
// or the transaction under way was given some.
func settingsInPlay(ctx context.Context, c *session) bool {
	return len(settingsOf(ctx)) > 0 || len(c.applied) > 0 || len(c.pin.txNames) > 0
}

// noSettings is a transaction's settings known to be none.
var noSettings = []setting{}

// txHad returns base and a reset for every other name applied in the
// transaction under way.
func (p *pin) txHad(base []setting) []setting {
	had := base
	for _, name := range p.txNames {
		if !slices.ContainsFunc(had, func(h setting) bool { return h.name == name }) {
			had = append(had[:len(had):len(had)], setting{name: name, reset: true})
		}
	}
	return had
}

// noteTxNames adds the names of set to those applied in the transaction
// under way.
func (p *pin) noteTxNames(set []setting) {
	for _, st := range set {
		if !slices.Contains(p.txNames, st.name) {
			p.txNames = append(p.txNames, st.name)
		}
	}
}

// withResets returns want, then a reset for every name of had that want
// lacks.
func withResets(want, had []setting) []setting {
	out := want
	for _, h := range had {
		found := false
		for _, w := range want {
			if w.name == h.name {
				found = true
				break
			}
		}
		if !found {
			if len(out) == len(want) {
				out = append(want[:len(want):len(want)], setting{name: h.name, reset: true})
			} else {
				out = append(out, setting{name: h.name, reset: true})
			}
		}
	}
	return out
}

// prefixDone records what a prefix left on c once the round trip that
// carried it has ended: with err, nil where it ended without one, in the
// transaction state the server reported last; reached counts the
// statements of p that ran without one (all, if every one did).
func (s *Scope) prefixDone(c *session, p *prefix, err error, reached int) {
	ok := err == nil
	if p.empty() {
		return
	}
	if len(p.set) > 0 {
		s.pool.c.settings.Add(1)
	}
	if p.reset && (p.ownTx() && reached >= s.pool.resetLen(p) || !p.ownTx() && ok) {
		// Committed: in its own transaction, whatever came after it, or
		// with the implicit transaction it shares, which committed
		// (see prefixStatements).
		s.pool.resetDone(c, p.seqOnly)
	}
	if p.begin {
		// Begun unless the reset before it failed; whatever happened to
		// the statement after it, its transaction is open (aborted, on
		// an error) until Atomic ends it. (On another driver BEGIN runs
		// right after the reset: where a setting after it failed, it
		// ran.)
		s.x.begun = c.pc != nil && c.pc.TxStatus() != 'I' || c.pc == nil && (ok || reached > s.pool.resetLen(p))
	}
	if len(p.set) > 0 && (p.local || c.px == nil && len(c.pin.txs) > 0) {
		// Transaction-local, or at session level in BeginTx's
		// transaction (prefixBlind), which a rollback undoes, putting
		// back the values before it: either way, the names a rollback
		// may bring back (see session.openTx).
		c.pin.noteTxNames(p.set)
	}
	if !ok && p.reset && reached < s.pool.resetLen(p) && (c.pc == nil || !c.pc.IsClosed() || serverEnded(err)) {
		// The reset itself failed (a statement_timeout the last scope
		// set, say), or the server ended the session before its end (a
		// backend killed while idle: its FATAL comes after the answers
		// it had written, so nothing after the reset ran): the
		// connection is given up, and the statement run again (see
		// retryable). Not where the connection failed before the
		// reset's answer was read: the server may have run it all,
		// and the statement after it in the round trip.
		c.pin.resetBad = true
	}
	if !ok {
		// The implicit transaction was rolled back, and what the prefix
		// did with it, where the server refused the statement; where the
		// error was the client's (a Scan's, after the server ran it all),
		// it committed. Not told apart here: the session's settings are
		// taken as unknown, every name applied again by the next
		// statement. Inside an explicit transaction nothing is known
		// until it ends.
		if !p.local && p.keep {
			c.applied = unknownSettings(c.applied, p.carry)
		}
		if c.pc != nil && c.pc.TxStatus() != 'I' {
			c.pin.txUnsure = true
		}
		return
	}
	if !p.keep {
		return
	}
	if p.local {
		// Known, even where it is none: nil would send the next
		// statement back to the session's values, which this one's
		// resets cleared for the transaction.
		c.pin.txSet = p.carry
		if c.pin.txSet == nil {
			c.pin.txSet = noSettings
		}
		// Known for the transaction; the session's values, which it
		// sees again once it ends, stay as sure as they were.
		c.pin.txUnsure = p.taints
	} else {
		c.applied = p.carry
		c.pin.unsure = p.taints
	}
}

// unknownSettings returns the names of a and b, sorted, each with a value
// no setting has (a NUL, which values never hold): settings of which the
// session may carry any value, which match no declared ones, so that the
// next statement applies, or clears, every one of them.
func unknownSettings(a, b []setting) []setting {
	out := make([]setting, 0, len(a)+len(b))
	for _, l := range [2][]setting{a, b} {
		for _, st := range l {
			if !slices.ContainsFunc(out, func(o setting) bool { return o.name == st.name }) {
				out = append(out, setting{name: st.name, value: "\x00"})
			}
		}
	}
	slices.SortFunc(out, func(x, y setting) int { return strings.Compare(x.name, y.name) })
	return out
}

// resetDone records that the reset c owed ran (DISCARD SEQUENCES alone
// where seqOnly, which leaves the settings applied).
func (pl *Pool) resetDone(c *session, seqOnly bool) {
	pl.c.resets.Add(1)
	if seqOnly {
		pl.c.seqResets.Add(1)
	} else {
		c.applied = nil
		dropNotifications(c)
	}
	c.resetDue, c.sweepDue, c.seqOnly, c.setDue, c.apart = false, false, false, false, false
}

// dropNotifications drops the notifications of channels an earlier scope
// listened on that arrived before the reset unlistened them.
func dropNotifications(c *session) {
	if c.px == nil {
		return
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		if _, err := c.px.WaitForNotification(done); err != nil {
			return
		}
	}
}

// The statements of a prefix.

// discardSequencesSQL is the reset where the scope left only sequence
// state (Options.PlainWrites).
const discardSequencesSQL = "DISCARD SEQUENCES"

// sweepSQL deallocates the statements PREPAREd in SQL (pgx's own, made
// through the protocol, are not from_sql and stay cached), in the reset of
// a session where code ran that may have prepared one (kindCode).
const sweepSQL = `DO $dbscope$DECLARE n text; BEGIN FOR n IN SELECT name FROM pg_catalog.pg_prepared_statements WHERE from_sql LOOP EXECUTE pg_catalog.format('DEALLOCATE %I', n); END LOOP; END$dbscope$`

// setConfigSQL returns the statement that applies n settings, its
// parameters name, value (NULL: reset) and is_local for each.
func setConfigSQL(n int) string {
	if n < len(setConfigStmts) {
		return setConfigStmts[n]
	}
	return makeSetConfigSQL(n)
}

var setConfigStmts = func() (s [8]string) {
	for i := range s {
		s[i] = makeSetConfigSQL(i)
	}
	return s
}()

func makeSetConfigSQL(n int) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "pg_catalog.set_config($%d, $%d, $%d)", 3*i+1, 3*i+2, 3*i+3)
	}
	return b.String()
}

// setConfigArgs returns the arguments of setConfigSQL(len(set)), as Go
// values (for pgx's batch).
func setConfigArgs(set []setting, local bool) []any {
	args := make([]any, 0, 3*len(set))
	l := "false"
	if local {
		l = "true"
	}
	for _, st := range set {
		var v any
		if !st.reset {
			v = st.value
		}
		args = append(args, st.name, v, l)
	}
	return args
}

// setConfigParams returns the arguments of setConfigSQL(len(set)) as text
// parameters (for pgconn), in c's buffer.
func (c *session) setConfigParams(set []setting, local bool) [][]byte {
	lp := boolFalse
	if local {
		lp = boolTrue
	}
	params := c.params[:0]
	for _, st := range set {
		var vp []byte
		if !st.reset {
			vp = stringBytes(st.value)
		}
		params = append(params, stringBytes(st.name), vp, lp)
	}
	c.params = params
	return params
}

var boolTrue, boolFalse = []byte("t"), []byte("f")

// stringBytes returns s's bytes without a copy, for a parameter that
// pgconn only reads (it encodes it into its buffer at once): they must
// never be written.
func stringBytes(s string) []byte {
	if s == "" {
		return []byte{} // not nil: nil sends NULL
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// prefixStatements yields the statements of p, in order. The reset owed
// by an earlier scope goes first; if it fails, the server skips the rest,
// up to the Sync, and the statement does not run.
//
// The reset gets a transaction of its own (BEGIN … COMMIT) in the same
// round trip, so that what it undoes at commit (UNLISTEN) is undone
// before the statement runs, and nothing the statement or its transaction
// does (an error, Atomic's rollback) can bring the earlier scope's state
// back. Where the sweep's check goes before it (code ran: every write),
// in the form that finds a channel listened on too, and the statement
// does not begin Atomic's transaction, the reset shares the implicit
// transaction of the statement instead, two statements fewer (ownTx): the
// check has found the session listening on no channel, the
// statement is never transaction control (that goes alone, see
// Scope.owed), and the reset commits with it, or, where anything after it
// fails, rolls back with it and is owed still (prefixDone), as if it had
// not run.
func (pl *Pool) prefixStatements(p *prefix, yield func(sql string, set bool)) {
	if p.reset && p.seqOnly {
		yield(discardSequencesSQL, false)
	} else if p.reset {
		switch {
		case p.check && !p.ownTx():
			yield(sweepCheckListenSQL, false)
		case p.check:
			yield(sweepCheckSQL, false)
		}
		if p.ownTx() {
			yield("BEGIN", false)
		}
		for _, q := range pl.resetStmts {
			yield(q, false)
		}
		if p.sweep && !p.check {
			yield(sweepSQL, false)
		}
		if p.ownTx() {
			yield("COMMIT", false)
		}
	}
	if p.begin {
		yield("BEGIN", false)
	}
	if len(p.set) > 0 {
		yield(setConfigSQL(len(p.set)), true)
	}
}

// queuePgx queues p's statements on b and returns how many.
func (pl *Pool) queuePgx(b *pgx.Batch, p *prefix) (n int) {
	pl.prefixStatements(p, func(sql string, set bool) {
		var args []any
		if set {
			args = setConfigArgs(p.set, p.local)
		}
		b.Queue(sql, args...)
		n++
	})
	return n
}

// flush runs p alone, in a round trip of its own: before what cannot
// share a round trip with it (raw access, a statement that must run
// first in its transaction, COPY).
func (s *Scope) flush(ctx context.Context, c *session, p *prefix) error {
	if c.px == nil && !p.empty() {
		return s.flushOn(ctx, c, p, c.sqlOn())
	}
	return s.flushOn(ctx, c, p, c.pin.conn)
}

// flushOn is flush, run on another driver through on: the *sql.Tx a
// BeginTx just began, which holds database/sql's lock on the *sql.Conn
// until it ends (a statement on the *sql.Conn that lost the connection
// would wait for it to end, and its end waits for the scope).
func (s *Scope) flushOn(ctx context.Context, c *session, p *prefix, on execer) error {
	if p.empty() {
		return nil
	}
	var err error
	reached, done := all, false
	if c.px == nil {
		reached, err = s.pool.runOther(ctx, on, p)
		if r, ok := on.(sqlRunner); ok {
			err = refusedIn(r, err)
		}
	} else {
		err = withLock(c.pin.conn, func() error {
			reached, err = s.pool.runTraced(ctx, c, p)
			// Under the lock: it reads pgconn's state (see shared).
			s.prefixDone(c, p, err, reached)
			done = true
			return err
		})
	}
	switch {
	case c.px == nil:
		s.prefixDone(c, p, err, reached)
	case !done:
		// database/sql has closed the connection: nothing ran, and
		// pgconn, which what the scope handed out may still drive, is
		// not to be read.
		c.pin.unsure, c.pin.txUnsure = true, true
	}
	if err != nil {
		return err
	}
	c.pin.unchecked = false // it answered
	return nil
}

// execer is what runOther runs statements on: a *sql.Conn or *sql.Tx.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// runOther runs the statements of prefix p on through database/sql,
// for drivers other than pgx: each in a round trip of its own. It returns
// how many ran.
func (pl *Pool) runOther(ctx context.Context, on execer, p *prefix) (reached int, err error) {
	pl.prefixStatements(p, func(q string, set bool) {
		var args []any
		if set {
			args = setConfigArgs(p.set, p.local)
		}
		if err == nil {
			if _, err = on.ExecContext(ctx, q, args...); err == nil {
				reached++
			}
		}
	})
	return reached, err
}

// failed is err, or, where there is none, an error that says the round
// trip failed: for prefixDone, from the paths that know it did.
func failed(err error) error {
	if err == nil {
		return errRoundTripFailed
	}
	return err
}

var errRoundTripFailed = errors.New("dbctx: the round trip failed")
