package dbctx

import (
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// What a statement's text says it may do to the session.
//
// The classifier lexes the text as PostgreSQL does (comments, nested block
// comments, strings written '…', E'…' and U&'…', dollar quoting, quoted and
// U&"" identifiers, several statements in one string) and reads each
// statement's kind and every function it calls. It errs one way only: what
// it cannot prove leaves the session as it was is kindState, which costs one
// reset round trip, never a leak.
//
// A statement is clean (no kindState) when it is one of
//   - SELECT, VALUES, TABLE, WITH, EXPLAIN, SHOW, DECLARE without HOLD,
//     FETCH, MOVE, CLOSE, LOCK, NOTIFY,
//   - transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …), SET
//     LOCAL, SET TRANSACTION, SET CONSTRAINTS,
//
// and every function it calls is a built-in that leaves nothing in the
// session (see harmlessBuiltins; set_config only with its third argument
// the literal true), and it writes nothing (no INSERT, UPDATE, DELETE,
// MERGE, SELECT INTO, pg_temp). Everything else is kindState: SET,
// RESET, DML (it may take sequence values and fire triggers), DDL, LISTEN,
// PREPARE, EXECUTE, DO, CALL, a call of any other function (user code may
// call set_config, take advisory locks, create temp tables…), and any
// statement the classifier does not know.
//
// What the text cannot show is not seen: code that PostgreSQL runs for a
// statement without naming it there (a view's or a policy's functions, a
// user-defined operator or cast, a function called in attribute notation)
// is taken to leave no session state. Options.ResetAlways covers schemas
// where it may.
type queryKind uint8

const (
	kindState   queryKind = 1 << iota // may leave state in the session
	kindBegin                         // begins a transaction
	kindOnce                          // must not run again once the server may have run it: CALL, DO, several statements, utility
	kindPoison                        // leaves state no reset undoes (LOAD, DISCARD ALL, DEALLOCATE ALL, setseed)
	kindCode                          // runs code the classifier does not know, which may PREPARE in SQL
	kindSession                       // sets what lives in the session beyond its transaction, by its text (see below)
	kindAlone                         // must be the first statement of its implicit transaction: nothing is pipelined before it
	kindSeqRead                       // reads session sequence state (currval, lastval)

	// kindUnknown is what a statement is where the classifier cannot tell.
	kindUnknown = kindState | kindOnce | kindCode | kindAlone

	// kindSessionState is what a statement is that visibly sets
	// session-level state: kindSession, which transaction pooling refuses
	// (Options.TransactionPooling): settings (SET, RESET, set_config(…,
	// false)), LISTEN, SQL-level prepared statements, cursors WITH HOLD,
	// temporary objects (but CREATE TEMP … ON COMMIT DROP), session
	// advisory locks, LOAD, DISCARD, setseed. What the classifier cannot
	// see (functions, DO, CALL, DML's triggers) is not refused.
	kindSessionState = kindState | kindSession
)

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

// classify reads what query may do to the session.
func classify(query string) queryKind {
	c := classifier{lx: lexer{q: query}}
	c.run()
	return c.kind
}

// Tokens.
type tokKind uint8

const (
	tEOF    tokKind = iota
	tWord           // an unquoted identifier or keyword
	tQuoted         // a "quoted" identifier
	tOpaque         // a U&"…" identifier: its name is not decoded
	tString         // any string constant, dollar-quoted ones included
	tNumber
	tParam // $1
	tLParen
	tRParen
	tLBracket
	tRBracket
	tDot
	tComma
	tSemi
	tOp // any other character
	tBad
)

type token struct {
	kind tokKind
	text string // the word, the quoted identifier's content, the string's body
}

// operand reports whether t ends an operand: an identifier that is not a
// keyword, a constant, a closing bracket. A name right after one is an
// alias, never a function called.
func (t token) operand() bool {
	switch t.kind {
	case tQuoted, tOpaque, tString, tNumber, tParam, tRParen, tRBracket:
		return true
	case tWord:
		switch keywordOf(t.text) {
		case kwNone:
			return true
		case kwReserved:
			// The reserved words that are values.
			var a [24]byte
			w, _ := lower(a[:0], t.text)
			switch string(w) {
			case "true", "false", "null", "current_date", "current_time", "current_timestamp",
				"localtime", "localtimestamp", "current_user", "current_role", "session_user", "user", "current_catalog":
				return true
			}
		}
	}
	return false
}

// is reports whether t is the word w (lower case), unquoted.
func (t token) is(w string) bool { return t.kind == tWord && strings.EqualFold(t.text, w) }

// lexer splits SQL text into tokens as PostgreSQL's scanner does, with
// standard_conforming_strings on (see Pool.check for the connections
// where it is off).
type lexer struct {
	q string
	i int
}

func isIdentStart(c byte) bool {
	return c|0x20 >= 'a' && c|0x20 <= 'z' || c == '_' || c >= 0x80
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// next returns the next token, skipping whitespace and comments.
func (l *lexer) next() token {
	q := l.q
	for l.i < len(q) {
		c := q[l.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
		case c == '-' && l.i+1 < len(q) && q[l.i+1] == '-':
			for l.i < len(q) && q[l.i] != '\n' && q[l.i] != '\r' {
				l.i++
			}
		case c == '/' && l.i+1 < len(q) && q[l.i+1] == '*':
			if !l.blockComment() {
				return token{kind: tBad}
			}
		default:
			return l.token()
		}
	}
	return token{kind: tEOF}
}

// blockComment skips a /* … */ comment, nested ones included.
func (l *lexer) blockComment() bool {
	q := l.q
	depth := 0
	for l.i+1 < len(q) {
		switch {
		case q[l.i] == '/' && q[l.i+1] == '*':
			depth++
			l.i += 2
		case q[l.i] == '*' && q[l.i+1] == '/':
			depth--
			l.i += 2
			if depth == 0 {
				return true
			}
		default:
			l.i++
		}
	}
	l.i = len(q)
	return false
}

func (l *lexer) token() token {
	q := l.q
	start := l.i
	c := q[start]
	switch {
	case isIdentStart(c):
		j := start + 1
		for j < len(q) && isIdentChar(q[j]) {
			j++
		}
		word := q[start:j]
		if j < len(q) && len(word) == 1 {
			switch {
			case q[j] == '\'' && (c|0x20 == 'e'):
				l.i = j
				return l.escapeString()
			case q[j] == '\'' && (c|0x20 == 'b' || c|0x20 == 'x' || c|0x20 == 'n'):
				l.i = j
				return l.quoted('\'', tString)
			case q[j] == '&' && c|0x20 == 'u' && j+1 < len(q) && (q[j+1] == '\'' || q[j+1] == '"'):
				l.i = j + 1
				if q[j+1] == '\'' {
					return l.quoted('\'', tString)
				}
				t := l.quoted('"', tOpaque)
				if t.kind != tBad {
					t.kind = tOpaque
				}
				return t
			}
		}
		l.i = j
		return token{kind: tWord, text: word}
	case c == '\'':
		return l.quoted('\'', tString)
	case c == '"':
		return l.quoted('"', tQuoted)
	case c == '$':
		j := start + 1
		if j < len(q) && isDigit(q[j]) {
			for j < len(q) && isDigit(q[j]) {
				j++
			}
			l.i = j
			return token{kind: tParam}
		}
		for j < len(q) && q[j] != '$' && isIdentChar(q[j]) {
			j++
		}
		if j < len(q) && q[j] == '$' && (j == start+1 || isIdentStart(q[start+1])) {
			tag := q[start : j+1]
			end := strings.Index(q[j+1:], tag)
			if end < 0 {
				l.i = len(q)
				return token{kind: tBad}
			}
			l.i = j + 1 + end + len(tag)
			return token{kind: tString, text: q[j+1 : j+1+end]}
		}
		l.i = start + 1
		return token{kind: tOp}
	case isDigit(c) || c == '.' && start+1 < len(q) && isDigit(q[start+1]):
		j := start
		for j < len(q) && isDigit(q[j]) {
			j++
		}
		if j < len(q) && q[j] == '.' && !(j+1 < len(q) && q[j+1] == '.') {
			j++
			for j < len(q) && isDigit(q[j]) {
				j++
			}
		}
		if j+1 < len(q) && q[j]|0x20 == 'e' && (isDigit(q[j+1]) || (q[j+1] == '+' || q[j+1] == '-') && j+2 < len(q) && isDigit(q[j+2])) {
			j += 2
			for j < len(q) && isDigit(q[j]) {
				j++
			}
		}
		l.i = j
		return token{kind: tNumber}
	}
	l.i++
	switch c {
	case '(':
		return token{kind: tLParen}
	case ')':
		return token{kind: tRParen}
	case '[':
		return token{kind: tLBracket}
	case ']':
		return token{kind: tRBracket}
	case '.':
		return token{kind: tDot}
	case ',':
		return token{kind: tComma}
	case ';':
		return token{kind: tSemi}
	}
	return token{kind: tOp, text: q[start:l.i]}
}

// quoted reads a constant or identifier delimited by quote, in which a
// doubled quote stands for one. The token's text is the body as written.
func (l *lexer) quoted(quote byte, kind tokKind) token {
	q := l.q
	start := l.i + 1
	for j := start; j < len(q); j++ {
		if q[j] != quote {
			continue
		}
		if j+1 < len(q) && q[j+1] == quote {
			j++
			continue
		}
		l.i = j + 1
		return token{kind: kind, text: q[start:j]}
	}
	l.i = len(q)
	return token{kind: tBad}
}

// escapeString reads an E'…' constant, where a backslash escapes the
// character after it, a quote included.
func (l *lexer) escapeString() token {
	q := l.q
	start := l.i + 1
	for j := start; j < len(q); j++ {
		switch q[j] {
		case '\\':
			j++
		case '\'':
			if j+1 < len(q) && q[j+1] == '\'' {
				j++
				continue
			}
			l.i = j + 1
			return token{kind: tString, text: q[start:j]}
		}
	}
	l.i = len(q)
	return token{kind: tBad}
}

// Keyword categories, as pg_get_keywords reports them.
type kwCat uint8

const (
	kwNone       kwCat = iota
	kwUnreserved       // may name anything, a function included
	kwColName          // special syntax when followed by "(" unqualified
	kwTypeFunc         // may name a function
	kwReserved         // never names a function
)

var keywords = sync.OnceValue(func() map[string]kwCat {
	m := make(map[string]kwCat, 512)
	for _, c := range []struct {
		cat   kwCat
		words string
	}{
		{kwUnreserved, unreservedKeywords},
		{kwColName, colNameKeywords},
		{kwTypeFunc, typeFuncKeywords},
		{kwReserved, reservedKeywords},
	} {
		for w := range strings.FieldsSeq(c.words) {
			m[w] = c.cat
		}
	}
	return m
})

var builtins = sync.OnceValue(func() map[string]struct{} {
	m := make(map[string]struct{}, 2600)
	for w := range strings.FieldsSeq(harmlessBuiltins) {
		m[w] = struct{}{}
	}
	return m
})

// lower folds an unquoted identifier as PostgreSQL does (ASCII letters
// only) into buf, which it returns; false if it does not fit.
func lower(buf []byte, w string) ([]byte, bool) {
	if len(w) > cap(buf) {
		return nil, false
	}
	buf = buf[:len(w)]
	for i := 0; i < len(w); i++ {
		c := w[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf, true
}

func keywordOf(w string) kwCat {
	var a [24]byte
	b, ok := lower(a[:0], w)
	if !ok {
		return kwNone
	}
	return keywords()[string(b)]
}

// harmless reports whether a function of this name in pg_catalog leaves
// no session state. folded says the name is unquoted (to be folded).
func harmless(name string, folded bool) bool {
	if !folded {
		_, ok := builtins()[name]
		return ok
	}
	var a [64]byte
	b, ok := lower(a[:0], name)
	if !ok {
		return false
	}
	_, ok = builtins()[string(b)]
	return ok
}

// classifier walks the tokens of a query, statement by statement.
type classifier struct {
	lx   lexer
	kind queryKind

	stmts int   // statements with tokens so far
	ntok  int   // tokens in the statement so far
	first token // its first word
	pos   int   // the current token's place after first
	read  bool
	// The last three tokens, p1 the latest.
	p1, p2, p3 token
	depth      int

	// A temporary object created (CREATE TEMP, SELECT INTO TEMP), and ON
	// COMMIT DROP said of it.
	temp, commitDrop bool

	// set_config(…) under way: the depth inside its parentheses (0: none),
	// the argument being read, and whether the argument so far is one
	// token meaning true.
	cfgDepth int
	cfgArg   int
	cfgToks  int
	cfgTrue  bool
}

func (c *classifier) run() {
	for {
		t := c.lx.next()
		switch t.kind {
		case tEOF:
			c.endStatement()
			if c.stmts > 1 {
				c.kind |= kindOnce | kindAlone
			}
			return
		case tBad:
			// Unterminated: the server will refuse it, but say the worst.
			c.kind |= kindUnknown
			return
		case tSemi:
			if c.depth == 0 {
				c.endStatement()
				continue
			}
		}
		c.token(t)
	}
}

func (c *classifier) endStatement() {
	if c.ntok > 0 {
		c.stmts++
		if c.cfgDepth > 0 {
			c.kind |= kindSessionState // set_config( never closed
		}
		if c.temp && !c.commitDrop {
			c.kind |= kindSessionState
		}
	}
	c.ntok, c.pos, c.depth, c.cfgDepth, c.read = 0, 0, 0, 0, false
	c.temp, c.commitDrop = false, false
	c.first, c.p1, c.p2, c.p3 = token{}, token{}, token{}, token{}
}

// token takes the next token of the current statement.
func (c *classifier) token(t token) {
	c.ntok++
	switch {
	case c.first.kind == tEOF && t.kind == tLParen:
		// "(SELECT …) UNION …": the kind is the first word's.
	case c.first.kind == tEOF:
		c.first, c.pos = t, 0
		c.startStatement(t)
	default:
		c.pos++
		c.second(t)
	}
	c.setConfigArg(t)
	switch t.kind {
	case tLParen:
		c.call()
		c.depth++
	case tRParen:
		if c.depth > 0 {
			c.depth--
		}
	case tWord:
		c.word(t)
		if c.read {
			c.readWord(t)
		}
	}
	c.shift(t)
}

// word looks in every statement for the words of temporary objects.
func (c *classifier) word(t token) {
	switch {
	case t.is("pg_temp"):
		c.kind |= kindSessionState
	case t.is("temp") || t.is("temporary"):
		if c.first.is("create") || c.p1.is("into") {
			c.temp = true
		}
	case t.is("drop") && c.p1.is("commit") && c.p2.is("on"):
		c.commitDrop = true
	}
}

func (c *classifier) shift(t token) { c.p3, c.p2, c.p1 = c.p2, c.p1, t }

// startStatement classifies a statement by its first token.
func (c *classifier) startStatement(t token) {
	if t.kind != tWord {
		c.kind |= kindUnknown
		return
	}
	var a [24]byte
	w, _ := lower(a[:0], t.text)
	switch string(w) {
	case "select", "values", "table", "with", "explain":
		c.read = true
	case "show", "fetch", "move", "close", "lock", "notify":
	case "declare":
		c.read = true // and HOLD, in readWord
	case "begin", "start":
		c.kind |= kindBegin | kindAlone
	case "commit", "end", "rollback", "abort", "savepoint", "release":
		c.kind |= kindOnce | kindAlone
	case "insert", "update", "delete", "merge":
		// Sequence values, and triggers.
		c.read = true // a call in it is still a call
		c.kind |= kindState | kindCode
	case "set", "prepare", "deallocate", "discard":
		// Decided by the next word (second).
	case "reset", "listen", "unlisten":
		c.kind |= kindSessionState
	case "execute":
		c.kind |= kindSessionState | kindCode
	case "load":
		c.kind |= kindUnknown | kindSession | kindPoison
	default:
		// DO, CALL, COPY, DDL, VACUUM… and anything unknown.
		c.kind |= kindUnknown
	}
}

// second reads the words after the first where they decide the kind.
func (c *classifier) second(t token) {
	switch {
	case c.pos == 1 && c.first.is("set"):
		if !(t.is("local") || t.is("transaction") || t.is("constraints")) {
			c.kind |= kindSessionState
		}
	case c.pos == 1 && c.first.is("prepare"):
		if t.is("transaction") {
			c.kind |= kindOnce
		} else {
			c.kind |= kindSessionState | kindCode
		}
	case c.pos == 1 && c.first.is("discard"):
		c.kind |= kindSessionState
		if t.is("all") {
			c.kind |= kindPoison
		}
	case c.first.is("deallocate") && c.pos <= 2:
		if c.pos == 1 {
			c.kind |= kindSessionState
		}
		if t.is("all") {
			c.kind |= kindPoison
		}
	}
}

// readWord looks in a statement that reads for words that write.
func (c *classifier) readWord(t token) {
	var a [24]byte
	w, ok := lower(a[:0], t.text)
	if !ok {
		return
	}
	switch string(w) {
	case "update":
		// FOR UPDATE, FOR NO KEY UPDATE lock rows for the transaction.
		if !c.p1.is("for") && !c.p1.is("key") {
			c.kind |= kindState | kindCode
		}
	case "insert", "delete", "merge":
		c.kind |= kindState | kindCode
	case "into":
		c.kind |= kindState
	case "hold":
		if c.first.is("declare") {
			c.kind |= kindSessionState
		}
	}
}

// call looks at the name before an opening parenthesis: a function
// called, unless the grammar reads it otherwise.
func (c *classifier) call() {
	n := c.p1
	if n.kind != tWord && n.kind != tQuoted && n.kind != tOpaque {
		return
	}
	if c.p2.kind == tDot {
		// schema.name(…): a built-in only as pg_catalog.name.
		q := c.p3
		if n.kind != tOpaque && (q.is("pg_catalog") || q.kind == tQuoted && q.text == "pg_catalog") {
			c.builtin(n.text, n.kind == tWord)
			return
		}
		c.kind |= kindState | kindCode
		return
	}
	if n.kind == tWord {
		switch keywordOf(n.text) {
		case kwReserved, kwColName:
			return // IN (, EXISTS (, CAST (, COALESCE (, VALUES (…
		}
	}
	p := c.p2
	switch {
	case p.operand() || p.is("as"):
		// An alias with column names: FROM t AS x(a, b), FROM t x(a);
		// count(*) FILTER (…), … OVER (…), t JOIN (…).
		return
	case n.is("join") && (p.is("left") || p.is("right") || p.is("full") || p.is("inner") ||
		p.is("outer") || p.is("cross") || p.is("natural")):
		return
	case n.is("varying") && (p.is("character") || p.is("char") || p.is("bit") || p.is("national")):
		return
	case n.is("materialized") && p.is("not"):
		return
	case n.kind == tOpaque:
		c.kind |= kindState | kindCode
		return
	}
	c.builtin(n.text, n.kind == tWord)
}

// builtin classifies a call of the built-in function name.
func (c *classifier) builtin(name string, folded bool) {
	eq := func(w string) bool {
		if folded {
			return strings.EqualFold(name, w)
		}
		return name == w
	}
	switch {
	case eq("set_config"):
		if c.cfgDepth > 0 {
			c.kind |= kindSessionState // one at a time
			return
		}
		c.cfgDepth, c.cfgArg, c.cfgToks, c.cfgTrue = c.depth+1, 0, 0, false
	case eq("setseed"):
		c.kind |= kindSessionState | kindPoison
	case harmless(name, folded):
	case sessionLock(name, folded):
		c.kind |= kindSessionState
	case stateful(name, folded):
		c.kind |= kindState
		if seqRead(name, folded) {
			c.kind |= kindSeqRead
		}
	default:
		c.kind |= kindState | kindCode
	}
}

// sequenceBuiltins leave sequence state and run no other code.
var sequenceBuiltins = []string{"nextval", "setval", "currval", "lastval"}

// sessionLockBuiltins take or give back session advisory locks and run no
// other code.
var sessionLockBuiltins = []string{
	"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
	"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
}

func stateful(name string, folded bool) bool { return among(sequenceBuiltins, name, folded) }
func seqRead(name string, folded bool) bool  { return among(sequenceReaders, name, folded) }

// sequenceReaders read the sequence state of the session.
var sequenceReaders = []string{"currval", "lastval"}

func sessionLock(name string, folded bool) bool { return among(sessionLockBuiltins, name, folded) }

func among(words []string, name string, folded bool) bool {
	for _, w := range words {
		if name == w || folded && strings.EqualFold(name, w) {
			return true
		}
	}
	return false
}

// setConfigArg follows the arguments of a set_config call: only
// set_config(name, value, true), transaction-local, is clean.
func (c *classifier) setConfigArg(t token) {
	if c.cfgDepth == 0 || c.depth < c.cfgDepth {
		return
	}
	switch {
	case t.kind == tRParen && c.depth == c.cfgDepth:
		if c.cfgArg != 2 || c.cfgToks != 1 || !c.cfgTrue {
			c.kind |= kindSessionState
		}
		c.cfgDepth = 0
	case t.kind == tComma && c.depth == c.cfgDepth:
		c.cfgArg++
		c.cfgToks, c.cfgTrue = 0, false
	default:
		c.cfgToks++
		c.cfgTrue = c.depth == c.cfgDepth && (t.is("true") ||
			t.kind == tString && (strings.EqualFold(t.text, "true") || strings.EqualFold(t.text, "t") || strings.EqualFold(t.text, "on")))
	}
}
