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
// comments, strings written '…', E'…' and U&'…' and continued on another
// line, dollar quoting, quoted and U&"" identifiers, several statements in
// one string) and reads each statement's kind and every function it calls.
// It errs one way only: what it cannot prove leaves the session as it was
// is kindState, which costs one reset round trip, never a leak.
//
// PostgreSQL reads a whole query string with the standard_conforming_strings
// in force when the string arrives, which a statement before it in the same
// transaction may have changed (SET LOCAL, set_config(…, true)): where the
// text has a backslash, it is read both ways and the kinds are joined.
// So with the client_encoding, which may have been set the same ways (or
// for the session, or by code the text does not show): PostgreSQL splits
// the text into the encoding's characters before it reads it, and in the
// client-only ones (SJIS, BIG5, GBK, GB18030) a character may take in
// the byte of a backslash or of a bracket; where one would, the text is
// read in that encoding's way too (see encsplit.go).
//
// A statement is clean (no kindState) when it is one of
//   - SELECT, VALUES, TABLE, WITH, SHOW, DECLARE without HOLD, FETCH,
//     MOVE, CLOSE, LOCK, NOTIFY,
//   - EXPLAIN, which only plans its statement unless ANALYZE (in any of
//     its spellings) runs it: then it is its statement's kind,
//   - transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …), SET
//     LOCAL, SET TRANSACTION, SET CONSTRAINTS,
//
// and every function it calls is a built-in that leaves nothing in the
// session (see harmlessBuiltins; set_config only with its third argument
// the literal true; currval and lastval read sequence state, kindSeqRead),
// and it writes nothing (no INSERT, UPDATE, DELETE, MERGE, SELECT INTO,
// pg_temp). Everything else is kindState: SET, RESET, DML (it may take
// sequence values and fire triggers), DDL, LISTEN, PREPARE, EXECUTE, DO,
// CALL, a call of any other function (user code may call set_config, take
// advisory locks, create temp tables…), and any statement the classifier
// does not know.
//
// Names and keywords are told apart where the grammar does: SET local.x,
// SET session.x and SET transaction.x name settings; PREPARE transaction AS
// … prepares a statement named transaction; DECLARE hold CURSOR declares a
// cursor named hold.
//
// What the text cannot show is not seen: code that PostgreSQL runs for a
// statement without naming it there (a view's or a policy's functions, a
// user-defined operator or cast, a function called in attribute notation,
// what planning folds: an immutable function of a column's default under
// EXPLAIN) is taken to leave no session state. Options.ResetAlways covers
// schemas where it may.
type queryKind uint16

const (
	kindState   queryKind = 1 << iota // may leave state in the session
	kindBegin                         // begins a transaction
	kindOnce                          // must not run again once the server may have run it: CALL, DO, several statements, utility
	kindPoison                        // leaves state no reset undoes (LOAD, DISCARD ALL, DEALLOCATE ALL, setseed)
	kindCode                          // runs code the classifier does not know, which may PREPARE in SQL
	kindSession                       // sets what lives in the session beyond its transaction, by its text (see below)

	// kindAlone is a statement that must be the first of its implicit
	// transaction, so that nothing may be sent before it in the same
	// Sync: it ends or begins transactions itself (transaction control,
	// PREPARE TRANSACTION, COMMIT PREPARED; CALL and DO, whose code may
	// COMMIT, ending the transaction of what was sent before it), or
	// PostgreSQL refuses it inside a transaction block
	// (PreventInTransactionBlock: VACUUM, CLUSTER, REINDEX, CREATE and
	// DROP DATABASE or TABLESPACE, ALTER DATABASE … SET TABLESPACE,
	// … CONCURRENTLY, ALTER SYSTEM, DISCARD ALL, subscriptions), or it is
	// several statements in one string, or the classifier does not know
	// it.
	kindAlone

	// kindSeqRead reads the session's sequence state (currval, lastval),
	// which behind a pooler in transaction mode is whatever the last
	// client of the server connection left: transaction pooling refuses
	// it.
	kindSeqRead

	// kindTxSet sets a setting until the end of its transaction (SET
	// LOCAL, set_config(…, true)): clean, since nothing of it outlives
	// the transaction, but in one it changes what the statements after
	// it see, so the settings a context declares are applied again.
	kindTxSet

	// kindDML is an INSERT, UPDATE or DELETE whose text is otherwise
	// clean (no other statement in it, no other write, no function but
	// the harmless built-ins, nextval and setval): the state it may leave
	// is its sequence values and what its table's own code does
	// (triggers, rules, defaults, constraints). It stays kindState |
	// kindCode, unless Options.PlainWrites says the schema's code leaves
	// nothing: then it is kindSeq.
	kindDML

	// kindSeq leaves sequence state alone: its reset is DISCARD
	// SEQUENCES. Never the classifier's answer (see kindDML).
	kindSeq

	// kindSetting sets a setting for the session in view (SET, RESET,
	// set_config(…, false)), with kindSession: one may be a transaction
	// default, which the reset must not share the next statement's
	// transaction under (see prefixFor).
	kindSetting

	// kindResolve changes how the statements after it are read: how
	// their names resolve (it sets the search_path, or the role, whose
	// name "$user" puts in it, or makes a temporary object: pg_temp comes
	// first), or how their text and constants are (it sets a setting
	// that may change that: DateStyle, TimeZone, transform_null_equals,
	// standard_conforming_strings…, any but those parseNeutral knows not
	// to). With kindSession or kindTxSet: what a statement prepared
	// meanwhile means changes back at the boundary, so the statements the
	// connection keeps prepared are dropped then (Scope.giveBack).
	kindResolve

	// kindPathLate sets a search_path that puts pg_catalog after another
	// schema, or may (its value not read): the built-in functions and
	// operators every statement names may then be a user's. Every
	// statement after it in the scope counts as code (see
	// Scope.execLocked), as after a declared search_path of that kind.
	kindPathLate

	// kindUtility is what a statement is that the classifier knows but
	// does not read further: DDL, COPY, ANALYZE, GRANT…
	kindUtility = kindState | kindOnce | kindCode

	// kindUnknown is what a statement is where the classifier cannot tell.
	kindUnknown = kindUtility | kindAlone

	// kindSessionState is what a statement is that visibly sets
	// session-level state: kindSession, which transaction pooling refuses
	// (Options.TransactionPooling): settings (SET, RESET, set_config(…,
	// false)), LISTEN, SQL-level prepared statements, cursors WITH HOLD,
	// temporary objects (but CREATE TEMP … ON COMMIT DROP) and anything
	// naming pg_temp, session advisory locks, LOAD, DISCARD, setseed. What
	// the classifier cannot see (functions, DO, CALL, DML's triggers) is
	// not refused, nor is the sequence state that nextval and DML leave.
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
	stray bool
}

// read returns readQuery's answers for query.
func (c *noteCache) read(query string) (queryKind, bool) {
	if len(query) > noteMaxQuery {
		return readQuery(query)
	}
	slot := &c[(uintptr(unsafe.Pointer(unsafe.StringData(query)))>>3)%noteSlots]
	if e := slot.Load(); e != nil && e.query == query {
		return e.kind, e.stray
	}
	k, stray := readQuery(query)
	slot.Store(&noteEntry{query, k, stray})
	return k, stray
}

// classify reads what query may do to the session, whatever the
// session's standard_conforming_strings, and whatever its
// client_encoding: in those whose characters of two bytes may end in a
// backslash's byte (SJIS, BIG5, GBK, GB18030), PostgreSQL reads
// E'\x95\x5c' as a string of one character, converted before it is
// read, where a reading byte by byte sees an escaped quote (see
// encsplit.go).
func classify(query string) queryKind {
	k, _ := readQuery(query)
	return k
}

// readQuery is classify, and whether query holds a placeholder that
// PostgreSQL does not read as one: a $ and a digit inside a string, a
// comment, a quoted identifier or an identifier (x$1), in a reading with
// standard_conforming_strings on and in UTF-8. A driver that puts its
// arguments into the text, as quoted literals, where its own reading finds
// placeholders (pgx's simple protocol) may put one there, where its quotes
// end the string it is in and its text runs: pgx reads E'…' after any
// word ending in e (a constant typed name, with no space before its
// quote, is a plain string) and a dollar quote inside an identifier
// (x$a$).
func readQuery(query string) (k queryKind, stray bool) {
	first := true
	dollars := placeholders(query)
	readings(query, func(l lexer) bool {
		c := classifier{lx: l}
		c.run()
		if first {
			k, first = c.kind, false
		} else {
			k = joinKinds(k, c.kind)
		}
		if !l.escapes && l.mb == splitBytes && c.params < dollars && !stray {
			// No such driver puts arguments into text read with
			// escapes, or in a client-only encoding: pgx's simple
			// protocol refuses to run unless standard_conforming_strings
			// is on and client_encoding is UTF8, where this reading is
			// PostgreSQL's. Where PostgreSQL reads a $ and a digit
			// otherwise than as a placeholder, pgx reads the text too:
			// it may read it so as well ('$5 off').
			stray = splicedElsewhere(l)
		}
		return true
	})
	return k, stray
}

// placeholders counts the $s followed by a digit in query, wherever they
// are: each begins a placeholder where PostgreSQL reads code.
func placeholders(query string) int {
	n := 0
	for i := strings.IndexByte(query, '$'); i >= 0; {
		if i+1 < len(query) && isDigit(query[i+1]) {
			n++
		}
		j := strings.IndexByte(query[i+1:], '$')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return n
}

// readings calls f with a lexer for each way PostgreSQL may read query,
// until f returns false: standard_conforming_strings on, and, where a
// backslash may escape, off (a statement before it in its transaction
// may have switched it: SET LOCAL, set_config; off, a backslash escapes
// a quote in '…' too, which moves where strings end: what is code one
// way is a string the other); each also split into characters as a
// client-only encoding splits it, where that takes a backslash, a
// bracket or an operator's byte into a character (see splitMatters: the
// client_encoding too may have been set before it, for the session or
// the transaction, and the classifier does not follow it). classify
// reads each way, and so does the reading of transaction control
// (txControlOf, endsBefore).
func readings(query string, f func(l lexer) bool) {
	backslash := strings.IndexByte(query, '\\') >= 0
	if !f(lexer{q: query}) || backslash && !f(lexer{q: query, escapes: true}) || !highBeforeMark(query) {
		return
	}
	for _, s := range clientSplits {
		if splitMatters(query, s) && (!f(lexer{q: query, mb: s}) || backslash && !f(lexer{q: query, escapes: true, mb: s})) {
			return
		}
	}
}

// joinKinds is what a statement read two ways may do: what either reading
// says, but kindDML only where both say so.
func joinKinds(k, k2 queryKind) queryKind {
	if k&k2&kindDML == 0 {
		k, k2 = k&^kindDML, k2&^kindDML
	}
	return k | k2
}

// classifyAs reads query with standard_conforming_strings off (escapes)
// or on, split into characters as mb says.
func classifyAs(query string, escapes bool, mb mbSplit) queryKind {
	c := classifier{lx: lexer{q: query, escapes: escapes, mb: mb}}
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
	text string // the word, the quoted identifier's content, the string's body, the number
	form strForm
}

// strForm is how a string constant's body is written (see token.value).
type strForm uint8

const (
	strQuoted strForm = iota // '…': doubled quotes, maybe continued on another line
	strCoded                 // and escapes that may encode any character: E'…' or '…' read with escapes, holding a backslash; U&'…'
	strDollar                // $$…$$: as it is
)

// value returns the value of the string constant t (of the identifier,
// for a quoted one), and whether it is known: segments joined and quotes
// undoubled, not known where escapes may encode any character.
func (t token) value() (string, bool) {
	switch {
	case t.kind == tQuoted:
		return strings.ReplaceAll(t.text, `""`, `"`), true
	case t.kind != tString || t.form == strDollar:
		return t.text, t.kind == tString
	case t.form == strCoded:
		return "", false
	case strings.IndexByte(t.text, '\'') < 0:
		return t.text, true
	}
	var b strings.Builder
	q := t.text
	for i := 0; i < len(q); i++ {
		if q[i] != '\'' {
			b.WriteByte(q[i])
			continue
		}
		if i+1 < len(q) && q[i+1] == '\'' {
			b.WriteByte('\'')
			i++
			continue
		}
		// The end of a segment: the next begins after its quote.
		j := strings.IndexByte(q[i+1:], '\'')
		if j < 0 {
			break
		}
		i += j + 1
	}
	return b.String(), true
}

// nameIs reports whether t, a name, may be w: a word or quoted identifier
// that is, case aside (as setting names are), or a U&"…" one, not decoded.
func nameIs(t token, w string) bool {
	switch t.kind {
	case tWord:
		return strings.EqualFold(t.text, w)
	case tQuoted:
		v, _ := t.value()
		return strings.EqualFold(v, w)
	case tOpaque:
		return true
	}
	return false
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

// lexer splits SQL text into tokens as PostgreSQL's scanner does, in the
// mode standard_conforming_strings gives it: on, a backslash is a
// character like any other in '…' and N'…'; off (escapes), it escapes the
// next one there, as it always does in E'…'.
type lexer struct {
	q       string
	i       int
	escapes bool
	mb      mbSplit // how the client encoding splits the text into characters (see encsplit.go)
}

func isIdentStart(c byte) bool {
	return c|0x20 >= 'a' && c|0x20 <= 'z' || c == '_' || c >= 0x80
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// identEnd returns where the identifier's characters that begin at
// q[i] end, in a split other than splitBytes: a character of several
// bytes is one of them whole, whatever its other bytes are.
func (l *lexer) identEnd(i int) int {
	q := l.q
	for i < len(q) && isIdentChar(q[i]) {
		i += l.mb.charLen(q, i)
	}
	return min(i, len(q))
}

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
		if l.mb == splitBytes {
			for j < len(q) && isIdentChar(q[j]) {
				j++
			}
		} else {
			j = l.identEnd(start)
		}
		word := q[start:j]
		if j < len(q) && len(word) == 1 {
			switch {
			case q[j] == '\'' && c|0x20 == 'e':
				l.i = j
				return l.str(true)
			case q[j] == '\'' && (c|0x20 == 'b' || c|0x20 == 'x'):
				l.i = j
				return l.str(false)
			case q[j] == '\'' && c|0x20 == 'n':
				// N'…' is a '…' string, read in the lexer's mode.
				l.i = j
				return l.str(l.escapes)
			case q[j] == '&' && c|0x20 == 'u' && j+1 < len(q) && (q[j+1] == '\'' || q[j+1] == '"'):
				l.i = j + 1
				if q[j+1] == '\'' {
					if l.escapes {
						// Refused with standard_conforming_strings off.
						l.i = len(q)
						return token{kind: tBad}
					}
					t := l.str(false)
					if t.kind == tString {
						t.form = strCoded // \XXXX, or UESCAPE's character
						l.uescape()
					}
					return t
				}
				t := l.quoted('"', tOpaque)
				if t.kind != tBad {
					t.kind = tOpaque
					l.uescape()
				}
				return t
			}
		}
		l.i = j
		return token{kind: tWord, text: word}
	case c == '\'':
		return l.str(l.escapes)
	case c == '"':
		return l.quoted('"', tQuoted)
	case c == '$':
		j := start + 1
		if j < len(q) && isDigit(q[j]) {
			for j < len(q) && isDigit(q[j]) {
				j++
			}
			l.i = j
			return token{kind: tParam, text: q[start:j]}
		}
		for j < len(q) && q[j] != '$' && isIdentChar(q[j]) {
			j += l.mb.charLen(q, j)
		}
		j = min(j, len(q))
		if j < len(q) && q[j] == '$' && (j == start+1 || isIdentStart(q[start+1])) {
			tag := q[start : j+1]
			end := strings.Index(q[j+1:], tag)
			if end < 0 {
				l.i = len(q)
				return token{kind: tBad}
			}
			l.i = j + 1 + end + len(tag)
			return token{kind: tString, text: q[j+1 : j+1+end], form: strDollar}
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
		return token{kind: tNumber, text: q[start:j]}
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

// uescape takes a UESCAPE clause after a U&"…" or U&'…' into its token,
// as PostgreSQL's parser does (base_yylex): U&"!0073etseed" UESCAPE '!'
// is one name, and a ( after the clause calls it, (0.5) the function
// setseed. Without its string after it, UESCAPE is left as it is
// (PostgreSQL refuses it).
func (l *lexer) uescape() {
	m := *l
	if !m.next().is("uescape") {
		return
	}
	if m.next().kind == tString {
		*l = m
	}
}

// quoted reads an identifier delimited by quote, in which a doubled quote
// stands for one. The token's text is the body as written.
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

// str reads a string constant from its opening quote: a doubled quote
// stands for one, a backslash escapes the character after it where esc,
// and a quote that follows the closing one after whitespace holding a
// newline continues the constant, read the same way (PostgreSQL's
// quotecontinue). The token's text is the body as written, from the first
// segment to the last.
func (l *lexer) str(esc bool) token {
	q := l.q
	start := l.i + 1
	for j := start; j < len(q); j++ {
		if l.mb != splitBytes && q[j] >= 0x80 {
			j += l.mb.charLen(q, j) - 1 // the rest of the character, whatever it is
			continue
		}
		switch q[j] {
		case '\\':
			if esc && j+1 < len(q) {
				j += l.mb.charLen(q, j+1) // the character escaped, whole
			}
		case '\'':
			if j+1 < len(q) && q[j+1] == '\'' {
				j++
				continue
			}
			if k := continuation(q, j+1); k > 0 {
				j = k
				continue
			}
			l.i = j + 1
			t := token{kind: tString, text: q[start:j]}
			if esc && strings.IndexByte(t.text, '\\') >= 0 {
				t.form = strCoded
			}
			return t
		}
	}
	l.i = len(q)
	return token{kind: tBad}
}

// continuation returns where the quote is that continues a string
// constant whose closing quote ends just before j, or -1: PostgreSQL's
// whitespace_with_newline (spaces, tabs, form feeds and -- comments, a
// newline, then any whitespace, comments only if a newline ends them)
// followed by a quote.
func continuation(q string, j int) int {
	newline := false
	for j < len(q) {
		switch c := q[j]; {
		case c == ' ' || c == '\t' || c == '\f':
			j++
		case c == '\n' || c == '\r':
			newline = true
			j++
		case c == '-' && j+1 < len(q) && q[j+1] == '-':
			for j < len(q) && q[j] != '\n' && q[j] != '\r' {
				j++
			}
		case c == '\'' && newline:
			return j
		default:
			return -1
		}
	}
	return -1
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
	kind queryKind // of the statements read so far

	params int // placeholders ($1) read, in every statement

	stmts int   // statements with tokens so far
	ntok  int   // tokens in the statement so far
	first token // its first word (under EXPLAIN, its statement's)
	obj   token // the word after it
	pos   int   // the current token's place after first
	read  bool  // a statement that reads: look for words that write
	// The last three tokens, p1 the latest.
	p1, p2, p3 token
	depth      int

	// What the statement does, by its kind (sk) and by the functions it
	// calls (ck): EXPLAIN without ANALYZE plans its statement without
	// running it, but planning may call the functions it names.
	sk, ck queryKind

	explain explainState
	analyze bool // EXPLAIN runs its statement
	opt     explainOpt

	// CREATE: still among the words before the object's kind (OR REPLACE,
	// LOCAL, GLOBAL, TEMP); past the AS of CREATE … AS.
	createHead, createAs bool
	// A temporary object created (CREATE TEMP, SELECT INTO TEMP), and ON
	// COMMIT DROP said of it.
	temp, commitDrop bool
	intoAt           int // place of INTO (0: none)
	cursorAt         int // DECLARE: place of CURSOR (0: not yet)

	// An INSERT, UPDATE or DELETE (not under EXPLAIN), and whether
	// anything in it but its own first words writes (see kindDML).
	dml, dmlOther bool

	// An UPDATE of the view pg_settings (its target, after UPDATE [ONLY]
	// [pg_catalog.], is pg_settings or a name not decoded), whose rule
	// calls set_config(name, setting, false) for each row it updates,
	// the names chosen by its WHERE (see endStatement); updTarget: the
	// UPDATE's target is being read (updSchema: after pg_catalog).
	settingsView, updTarget, updSchema bool

	// set_config(…) under way: the depth inside its parentheses (0: none),
	// the argument being read, and whether the argument so far is one
	// token meaning true.
	cfgDepth int
	cfgArg   int
	cfgToks  int
	cfgTrue  bool

	// OPERATOR( … ) or DISTINCT ON ( … ) under way: the depth inside its
	// parentheses (0: none); and the token count at the ) that closed the
	// last one, which ends an operator or DISTINCT ON's list, not an
	// operand: a name after it is an operand's, not an alias ('a'
	// OPERATOR(||) f(…) and SELECT DISTINCT ON (1) f(…) call f).
	opDepth     int
	distinctDep int
	opCloseAt   int

	// The token count at ON conflict( (0: none): ON CONFLICT's columns
	// where DO follows its ), else a call of a function named conflict
	// (conflictDep: the depth inside its parentheses; conflictClose: the
	// token count at its )).
	conflictAt, conflictDep, conflictClose int
	// Where a call of conflict was seen: it stays so.
	conflictCall bool

	// A search_path being set: SET [LOCAL | SESSION] search_path, or
	// set_config('search_path', …) (cfgPath), whose value must be a plain
	// string to be read for pg_temp (cfgPlain: the argument so far is one
	// such string).
	pathSet, cfgPath, cfgPlain bool
	pathAt                     int    // SET search_path: the place of the name
	pathItems                  int    // and the items of its value read
	cfgCoded                   bool   // set_config's argument so far is one string written with escapes
	cfgValue                   string // and its value
}

// explainState is where a statement is in EXPLAIN's prefix.
type explainState uint8

const (
	explainNone    explainState = iota
	explainPrefix               // after EXPLAIN, ANALYZE, VERBOSE or the options
	explainOptions              // inside EXPLAIN ( … )
	explainInner                // in the statement explained
)

// explainOpt is the option of EXPLAIN ( … ) being read.
type explainOpt struct {
	name  token
	value token
	toks  int // tokens of its value
}

func (c *classifier) run() {
	for {
		t := c.lx.next()
		switch t.kind {
		case tEOF:
			c.endStatement()
			if c.stmts > 1 {
				c.kind |= kindOnce | kindAlone
				c.kind &^= kindDML
			}
			return
		case tBad:
			if c.lx.escapes {
				// Unterminated with standard_conforming_strings off:
				// PostgreSQL, reading it so, refuses the whole string.
				return
			}
			// Unterminated: the server will refuse it, but say the worst.
			c.kind |= kindUnknown
			return
		case tParam:
			c.params++
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
		if c.conflictAt > 0 || c.conflictCall {
			c.ck |= kindState | kindCode // conflict(…) called
		}
		if c.settingsView {
			// As set_config with a name computed: it may be search_path
			// (to anything), or seed, whose state no reset undoes.
			c.sk |= kindSessionState | kindSetting | kindResolve | kindPathLate | kindPoison
		}
		k := c.ck
		if c.cfgDepth > 0 {
			k |= kindSessionState // set_config( never closed
		}
		if c.explain == explainNone || c.explain == explainInner && c.analyze {
			k |= c.sk
			if c.temp {
				k |= kindResolve
				if !c.commitDrop {
					k |= kindSessionState
				}
			}
		}
		const other = kindCode | kindSession | kindPoison | kindOnce | kindAlone | kindBegin
		if c.dml && !c.dmlOther && c.ck&other == 0 && c.sk&(other&^kindCode) == 0 && c.cfgDepth == 0 {
			k |= kindDML
		}
		c.kind |= k
	}
	*c = classifier{lx: c.lx, kind: c.kind, stmts: c.stmts, params: c.params}
}

// token takes the next token of the current statement.
func (c *classifier) token(t token) {
	c.ntok++
	if (c.explain == explainPrefix || c.explain == explainOptions) && c.explainToken(t) {
		c.shift(t)
		return
	}
	switch {
	case c.first.kind == tEOF && t.kind == tLParen:
		// "(SELECT …) UNION …": the kind is the first word's.
	case c.first.kind == tEOF:
		c.first, c.pos = t, 0
		c.startStatement(t)
	default:
		c.pos++
		if c.pos == 1 {
			c.obj = t
		}
		c.second(t)
		if c.pathSet && c.pos > c.pathAt {
			c.pathValue(t)
		}
	}
	c.setConfigArg(t)
	c.updateTarget(t)
	c.attribute(t)
	c.language(t)
	switch t.kind {
	case tLParen:
		switch {
		case c.p1.is("operator") && c.opDepth == 0:
			c.opDepth = c.depth + 1
		case c.p1.is("on") && c.p2.is("distinct") && c.distinctDep == 0:
			c.distinctDep = c.depth + 1
		default:
			c.call()
		}
		c.depth++
	case tRParen:
		if c.opDepth > 0 && c.depth == c.opDepth {
			c.opDepth, c.opCloseAt = 0, c.ntok
		}
		if c.distinctDep > 0 && c.depth == c.distinctDep {
			c.distinctDep, c.opCloseAt = 0, c.ntok
		}
		if c.conflictDep > 0 && c.depth == c.conflictDep {
			c.conflictDep, c.conflictClose = 0, c.ntok
		}
		if c.depth > 0 {
			c.depth--
		}
	case tWord:
		if c.conflictAt > 0 && c.depth == 0 && t.is("do") && c.conflictClose == c.ntok-1 {
			c.conflictAt = 0 // ON CONFLICT (…) DO
		}
		c.word(t)
		if c.read {
			c.readWord(t)
		}
	case tQuoted:
		if tempSchema(t.text) {
			c.sk |= kindSessionState | kindResolve
		}
	case tOpaque:
		// Its name is not decoded: it may be pg_temp.
		c.sk |= kindSessionState | kindResolve
	case tString:
		// A search_path for SET LOCAL or set_config(…, true), which would
		// send the CREATE after it to pg_temp; written with escapes
		// (E'pg\x5ftemp', U&'pg\005Ftemp', U&'pg!005ftemp' UESCAPE '!') it
		// cannot be read here.
		v, known := t.value()
		if containsFold(v, "pg_temp") || containsFold(v, "pg_toast_temp") || c.pathSet && !known {
			c.sk |= kindSessionState | kindResolve
		}
	}
	c.shift(t)
}

// attribute reads t where it may call a function in attribute notation:
// PostgreSQL reads (x).f, and t.f, as f(x) where no field f is found,
// for an argument of any type ((42::bigint).pg_advisory_lock takes a
// session lock; (0.5).setseed seeds random()). A user's function so
// called is not seen (see the package doc), but the built-ins that
// leave what only dbscope's special handling covers (the seed, a
// session lock, sequence state, what no reset undoes) are told by
// name: a name after a dot, with no ( after it, that is one of theirs
// is taken for their call (a column of that name too).
func (c *classifier) attribute(t token) {
	if c.p1.kind != tDot || t.kind != tWord && t.kind != tQuoted && t.kind != tOpaque {
		return
	}
	if l := c.lx; l.next().kind == tLParen {
		return // schema.f(…): a call, read as one
	}
	if t.kind == tOpaque {
		// Its name is not decoded: it may be setseed.
		c.ck |= kindSessionState | kindCode | kindPoison
		return
	}
	name, folded := t.text, t.kind == tWord
	if !folded {
		name, _ = t.value()
	}
	if among(noOneArgument, name, folded) {
		return // no call of one argument: a column (t.lastval)
	}
	if among(sequenceReaders, name, folded) && c.p2.kind != tRParen && c.p2.kind != tRBracket && c.p2.kind != tParam {
		// t.currval is a column of t: t.f is f(t) only where t is a
		// function of FROM returning a scalar (FROM CAST('s' AS
		// regclass) t), not worth refusing a column so named for, under
		// transaction pooling. (x).currval, a[1].currval, $1.currval
		// call it.
		return
	}
	if among(unresettable, name, folded) || sessionLock(name, folded) ||
		among(sequenceWriters, name, folded) || among(sequenceReaders, name, folded) {
		c.builtin(name, folded)
	}
}

// language reads t where it may name a CREATE's language: a function or
// procedure of LANGUAGE C is checked by fmgr_c_validator, which loads
// its library into the session, with the settings it defines, even
// where the CREATE then fails (its symbol not found): no reset undoes
// it, as LOAD's.
func (c *classifier) language(t token) {
	if c.depth > 0 || !c.first.is("create") || !c.p1.is("language") {
		return
	}
	if v, _ := t.value(); t.kind == tWord && strings.EqualFold(t.text, "c") ||
		(t.kind == tQuoted || t.kind == tString) && strings.EqualFold(v, "c") || t.kind == tOpaque ||
		t.kind == tString && t.form == strCoded {
		c.sk |= kindSessionState | kindPoison
	}
}

// updateTarget reads t where it may be an UPDATE's target, for
// settingsView.
func (c *classifier) updateTarget(t token) {
	switch {
	case t.is("update"):
		c.updTarget, c.updSchema = true, false
	case !c.updTarget:
	case t.is("only") || t.kind == tLParen:
	case !c.updSchema && nameIs(t, "pg_catalog"):
		c.updSchema = true
	case c.updSchema && t.kind == tDot:
	default:
		if nameIs(t, "pg_settings") {
			c.settingsView = true
		}
		c.updTarget, c.updSchema = false, false
	}
}

// explainToken reads t where EXPLAIN's prefix may go on, and reports
// whether it did; where not, t begins the statement explained.
func (c *classifier) explainToken(t token) bool {
	if c.explain == explainOptions {
		switch t.kind {
		case tComma, tRParen:
			if analyzeOption(c.opt) {
				c.analyze = true
			}
			c.opt = explainOpt{}
			if t.kind == tRParen {
				c.explain = explainPrefix
			}
		default:
			if c.opt.name.kind == tEOF {
				c.opt.name = t
			} else {
				c.opt.value = t
				c.opt.toks++
			}
		}
		return true
	}
	switch {
	case t.is("analyze") || t.is("analyse"):
		c.analyze = true
		return true
	case t.is("verbose"):
		return true
	case t.kind == tLParen && c.p1.is("explain"):
		// EXPLAIN (options) …, or EXPLAIN (SELECT …).
		l := c.lx
		n := l.next()
		if !(n.kind == tLParen || n.is("select") || n.is("values") || n.is("table") || n.is("with")) {
			c.explain = explainOptions
			return true
		}
	}
	c.explain = explainInner
	c.first = token{}
	return false
}

// analyzeOption reports whether an option of EXPLAIN ( … ) may be
// ANALYZE set to true: named analyze or ANALYSE unquoted, "analyze"
// quoted, or not decoded; with no value, or one other than false, off or
// 0.
func analyzeOption(o explainOpt) bool {
	switch n := o.name; {
	case n.is("analyze") || n.is("analyse"), n.kind == tQuoted && n.text == "analyze", n.kind == tOpaque:
	default:
		return false
	}
	if o.toks != 1 {
		return true // none, or not a constant
	}
	v := o.value
	switch v.kind {
	case tWord, tString:
		return !strings.EqualFold(v.text, "false") && !strings.EqualFold(v.text, "off")
	case tNumber:
		return v.text != "0"
	}
	return true
}

// word looks in every statement for the words of temporary objects and of
// statements PostgreSQL runs alone.
func (c *classifier) word(t token) {
	if tempSchema(t.text) {
		c.sk |= kindSessionState | kindResolve
	}
	switch {
	case c.createHead && c.pos > 0:
		switch {
		case t.is("temp") || t.is("temporary"):
			c.temp = true
		case t.is("or") || t.is("replace") || t.is("local") || t.is("global"):
		default:
			c.createHead = false
		}
	case c.intoAt > 0 && c.pos-c.intoAt <= 2 && (t.is("temp") || t.is("temporary")):
		// SELECT … INTO [LOCAL | GLOBAL] TEMP t.
		c.temp = true
	}
	if c.depth > 0 {
		return
	}
	switch {
	case t.is("concurrently") && (c.first.is("create") || c.first.is("drop") || c.first.is("alter") || c.first.is("reindex")):
		c.sk |= kindAlone
	case c.first.is("create") && t.is("as"):
		c.createAs = true
	case t.is("drop") && c.p1.is("commit") && c.p2.is("on") && c.first.is("create") && !c.createAs:
		c.commitDrop = true
	case t.is("tablespace") && c.p1.is("set") && c.first.is("alter") && c.obj.is("database"):
		c.sk |= kindAlone
	}
}

// tempSchema reports whether name may be the session's temporary schema:
// pg_temp, or pg_temp_N as the catalog names it, or its pg_toast_temp_N,
// where a CREATE makes a temporary table too.
func tempSchema(name string) bool {
	return len(name) >= 7 && strings.EqualFold(name[:7], "pg_temp") ||
		len(name) >= 13 && strings.EqualFold(name[:13], "pg_toast_temp")
}

// containsFold reports whether s contains the lower-case ASCII word w,
// in any case.
func containsFold(s, w string) bool {
	for i := 0; i+len(w) <= len(s); i++ {
		if s[i]|0x20 == w[0] && strings.EqualFold(s[i:i+len(w)], w) {
			return true
		}
	}
	return false
}

func (c *classifier) shift(t token) { c.p3, c.p2, c.p1 = c.p2, c.p1, t }

// startStatement classifies a statement by its first token.
func (c *classifier) startStatement(t token) {
	if t.kind != tWord {
		c.sk |= kindUnknown
		return
	}
	var a [24]byte
	w, _ := lower(a[:0], t.text)
	switch string(w) {
	case "select", "values", "table", "with", "declare":
		c.read = true // and DECLARE's HOLD, in second
	case "explain":
		if c.explain == explainNone {
			c.explain = explainPrefix
			return
		}
		c.sk |= kindUnknown
	case "show", "fetch", "move", "close", "lock", "notify":
	case "begin", "start":
		c.sk |= kindBegin | kindAlone
	case "commit", "end", "rollback", "abort", "savepoint", "release":
		c.sk |= kindOnce | kindAlone
	case "insert", "update", "delete", "merge":
		// Sequence values, and triggers.
		c.read = true // a call in it is still a call
		c.sk |= kindState | kindCode
		c.dml = c.explain == explainNone && !t.is("merge")
	case "set", "prepare", "deallocate", "discard":
		// Decided by the next word (second).
	case "reset":
		c.sk |= kindSessionState | kindSetting
	case "listen", "unlisten":
		c.sk |= kindSessionState
	case "execute":
		c.sk |= kindSessionState | kindCode
	case "load":
		c.sk |= kindUtility | kindSession | kindPoison
	case "create":
		c.createHead = true
		c.sk |= kindUtility
	case "alter", "drop", "analyze", "analyse", "checkpoint", "comment", "copy", "grant",
		"import", "reassign", "refresh", "revoke", "security", "truncate":
		c.sk |= kindUtility
	case "vacuum", "cluster", "reindex", "call", "do":
		// VACUUM, CLUSTER and REINDEX refuse a transaction block (CLUSTER
		// and REINDEX of several tables, or a partitioned one); CALL and DO
		// may COMMIT.
		c.sk |= kindUnknown
	default:
		c.sk |= kindUnknown
	}
}

// second reads the words after the first where they decide the kind.
func (c *classifier) second(t token) {
	if c.setsSeed(t) {
		// The seed of random(): setting it calls setseed, whose state no
		// reset undoes, even SET LOCAL's, even RESET's.
		c.sk |= kindSessionState | kindPoison
	}
	if c.resolves(t) || c.setsParsing(t) {
		c.sk |= kindResolve
	}
	switch {
	case c.pos == 1 && c.first.is("set"):
		c.setForm(t)
		c.pathSet, c.pathAt = setsPath(t), c.pos
	case c.pos == 2 && c.first.is("set") && c.atSettingName() && setsPath(t):
		c.pathSet, c.pathAt = true, c.pos
	case c.pos == 1 && c.first.is("prepare"):
		// PREPARE TRANSACTION 'gid', or a statement named transaction.
		if l := c.lx; t.is("transaction") && l.next().kind == tString {
			c.sk |= kindOnce | kindAlone
		} else {
			c.sk |= kindSessionState | kindCode
		}
	case c.pos == 1 && c.first.is("discard"):
		c.sk |= kindSessionState
		if t.is("all") {
			c.sk |= kindPoison | kindAlone
		}
	case c.first.is("deallocate") && c.pos <= 2:
		if c.pos == 1 {
			c.sk |= kindSessionState
		}
		if t.is("all") || driverStatement(t) {
			// As DEALLOCATE ALL, a statement a driver prepared through
			// the protocol leaves the driver's cache naming what the
			// session no longer has: the next scope's statement fails.
			c.sk |= kindPoison
		}
	case c.pos == 1 && (c.first.is("create") || c.first.is("drop")):
		if t.is("database") || t.is("tablespace") || t.is("subscription") {
			c.sk |= kindAlone
		}
		if t.is("extension") && c.first.is("create") {
			// Its script's functions of LANGUAGE C load its library
			// (fmgr_c_validator), rolled back or dropped too: as such a
			// CREATE, but not refused under transaction pooling, where a
			// migration's CREATE EXTENSION IF NOT EXISTS is common.
			c.sk |= kindPoison
		}
	case c.pos == 1 && c.first.is("alter"):
		if t.is("system") || t.is("subscription") {
			c.sk |= kindAlone
		}
		if t.is("extension") {
			c.sk |= kindPoison // ALTER EXTENSION … UPDATE: as CREATE EXTENSION
		}
	case c.first.is("declare") && c.pos >= 2:
		// DECLARE name [options] CURSOR [WITH HOLD | WITHOUT HOLD] FOR …
		switch {
		case c.cursorAt == 0 && t.is("cursor"):
			c.cursorAt = c.pos
		case c.cursorAt > 0 && c.pos == c.cursorAt+2 && t.is("hold") && c.p1.is("with"):
			c.sk |= kindSessionState
		}
	}
}

// driverStatement reports whether t, the name DEALLOCATE [PREPARE]
// drops, may name a statement a driver prepared through the protocol
// rather than one the unit PREPAREd in SQL: pgx's statement cache names
// them stmtcache_…, dbscope dbscope_N, and pgx's Prepare, which its
// database/sql driver calls for a *sql.Stmt with the text as the name,
// stmt_ and 48 hex digits of the text's SHA-256; a name not decoded
// (U&"…"), and, erring toward closing, a quoted name an unquoted one could
// not spell or a statement of one word (another driver may name a
// statement by its text). The word PREPARE of DEALLOCATE PREPARE, read
// here too, is none of them.
func driverStatement(t token) bool {
	var v string
	switch t.kind {
	case tOpaque:
		return true
	case tWord:
		if t.is("prepare") {
			return false
		}
		v = strings.ToLower(t.text)
	case tQuoted:
		v, _ = t.value()
	default:
		return false
	}
	lv := strings.ToLower(v)
	if strings.HasPrefix(lv, "stmtcache_") || strings.HasPrefix(lv, "dbscope_") {
		return true
	}
	if h, ok := strings.CutPrefix(lv, "stmt_"); ok && len(h) == 48 && strings.Trim(h, "0123456789abcdef") == "" {
		return true
	}
	switch v {
	case "begin", "commit", "end", "abort", "rollback", "checkpoint", "vacuum", "analyze", "analyse", "cluster":
		return true
	}
	// A quoted name that an unquoted one could not spell (a space, an
	// upper-case letter): a statement's text, maybe.
	for i := 0; i < len(v); i++ {
		c := v[i]
		if !(c >= 'a' && c <= 'z' || c == '_' || c >= 0x80 || i > 0 && (isDigit(c) || c == '$')) {
			return true
		}
	}
	return v == ""
}

// pathValue reads t, a token of the value SET search_path sets, for
// pg_catalog after another schema (kindPathLate).
func (c *classifier) pathValue(t token) {
	switch t.kind {
	case tWord:
		if c.pathItems == 0 && (t.is("to") || t.is("default") || t.is("from") || t.is("current")) {
			return
		}
		if t.is("pg_catalog") && c.pathItems > 0 {
			c.sk |= kindPathLate
		}
		c.pathItems++
	case tQuoted, tString:
		v, known := t.value()
		if !known || c.pathItems > 0 && containsFold(v, "pg_catalog") || c.pathItems == 0 && pathLate(v) {
			c.sk |= kindPathLate
		}
		c.pathItems++
	case tOpaque:
		c.sk |= kindPathLate
	}
}

// resolves reports whether t names, in SET [LOCAL | SESSION] or RESET,
// a setting of kindResolve's: search_path, role, session authorization,
// or RESET ALL. A setting named so with a dot after (search_path.x) is
// another, but is taken for one.
func (c *classifier) resolves(t token) bool {
	switch {
	case c.pos == 1 && c.first.is("reset"):
		return nameIs(t, "search_path") || nameIs(t, "role") || t.is("session") || nameIs(t, "session_authorization") || t.is("all")
	case c.first.is("set") && c.atSettingName():
		return setsPath(t) || nameIs(t, "role") || nameIs(t, "session_authorization") ||
			t.is("authorization") && c.p1.is("session")
	}
	return false
}

// setsParsing reports whether t names, in SET [LOCAL | SESSION] or
// RESET, a setting that may change how PostgreSQL reads a statement's
// text, its constants or what planning folds (DateStyle, TimeZone,
// transform_null_equals, standard_conforming_strings…): any but those
// parseNeutral knows to change none of it, and SET's own words (TIME
// ZONE, XML OPTION, NAMES) are taken for such settings. A custom
// setting (app.x) changes nothing of it.
func (c *classifier) setsParsing(t token) bool {
	switch {
	case c.pos == 1 && c.first.is("reset"):
	case c.pos == 1 && c.first.is("set"):
		if l := c.lx; (t.is("local") || t.is("session")) && modifierBefore(l.next()) {
			return false // the name comes next
		}
	case c.pos == 2 && c.first.is("set") && (c.p1.is("local") || c.p1.is("session")) && modifierBefore(t):
	default:
		return false
	}
	if l := c.lx; l.next().kind == tDot {
		return false // ext.name: a custom setting
	}
	switch t.kind {
	case tWord:
		return !parseNeutral(t.text)
	case tQuoted:
		v, _ := t.value()
		return !parseNeutral(v)
	}
	return true // not decoded
}

// modifierBefore reports whether LOCAL or SESSION after SET, followed by
// n, is the keyword rather than a setting's name (see setForm).
func modifierBefore(n token) bool {
	return n.kind != tDot && !(n.kind == tOp && n.text == "=") && !n.is("to")
}

// parseNeutral reports whether the setting name changes nothing of how
// PostgreSQL reads a statement's text, its constants, or what planning
// folds into a plan that a statement prepared keeps (extra_float_digits,
// bytea_output and quote_all_identifiers do: a float's, a bytea's or an
// identifier's output is folded as an immutable function's): a custom
// setting (a dot in its name), the words of SET TRANSACTION, SET
// SESSION CHARACTERISTICS and SET CONSTRAINTS, and the settings of
// parseNeutralNames, which change what a statement may spend or how it
// is planned, never its result. Every other name, known or not, may.
func parseNeutral(name string) bool {
	if strings.IndexByte(name, '.') >= 0 {
		return true
	}
	var a [64]byte
	w, ok := lower(a[:0], name)
	if !ok {
		return false
	}
	if len(w) > len("enable_") && string(w[:len("enable_")]) == "enable_" {
		// The planner's methods; but a plan made without partition
		// pruning reads partitions whose CHECK the data may break (a
		// foreign table's, not enforced), which one made with it skips.
		return string(w) != "enable_partition_pruning"
	}
	_, ok = parseNeutralNames[string(w)]
	return ok
}

// parseNeutralNames are the settings a unit sets for its statements'
// cost, their planning or its session's bookkeeping, which PostgreSQL
// reads as a statement runs or is planned and which change no result.
var parseNeutralNames = map[string]struct{}{
	// SET TRANSACTION, SET SESSION CHARACTERISTICS, SET CONSTRAINTS.
	"transaction": {}, "characteristics": {}, "constraints": {},
	"transaction_isolation": {}, "transaction_read_only": {}, "transaction_deferrable": {},
	"default_transaction_isolation": {}, "default_transaction_read_only": {}, "default_transaction_deferrable": {},
	// Timeouts.
	"statement_timeout": {}, "lock_timeout": {}, "idle_in_transaction_session_timeout": {},
	"idle_session_timeout": {}, "deadlock_timeout": {}, "client_connection_check_interval": {},
	"tcp_keepalives_idle": {}, "tcp_keepalives_interval": {}, "tcp_keepalives_count": {}, "tcp_user_timeout": {},
	// Resources.
	"work_mem": {}, "sort_mem": {}, "hash_mem_multiplier": {}, "maintenance_work_mem": {}, "vacuum_mem": {},
	"logical_decoding_work_mem": {}, "temp_buffers": {}, "temp_file_limit": {},
	"effective_io_concurrency": {}, "maintenance_io_concurrency": {}, "backend_flush_after": {},
	"max_parallel_workers": {}, "max_parallel_workers_per_gather": {}, "max_parallel_maintenance_workers": {},
	"parallel_leader_participation": {},
	// Planning (and enable_*).
	"seq_page_cost": {}, "random_page_cost": {}, "cpu_tuple_cost": {}, "cpu_index_tuple_cost": {},
	"cpu_operator_cost": {}, "parallel_setup_cost": {}, "parallel_tuple_cost": {},
	"min_parallel_table_scan_size": {}, "min_parallel_index_scan_size": {}, "effective_cache_size": {},
	"jit": {}, "jit_above_cost": {}, "jit_inline_above_cost": {}, "jit_optimize_above_cost": {},
	"jit_expressions": {}, "jit_tuple_deforming": {},
	"geqo": {}, "geqo_threshold": {}, "geqo_effort": {}, "geqo_pool_size": {}, "geqo_generations": {},
	"geqo_selection_bias": {}, "geqo_seed": {},
	// (Not constraint_exclusion: a plan made under it skips a table whose
	// CHECK the data may break, a foreign table's, not enforced.)
	"cursor_tuple_fraction": {}, "default_statistics_target": {},
	"from_collapse_limit": {}, "join_collapse_limit": {}, "plan_cache_mode": {}, "recursive_worktable_factor": {},
	"force_parallel_mode": {}, "debug_parallel_query": {},
	// Reporting, commit, the objects DDL makes.
	"application_name": {}, "client_min_messages": {}, "lc_messages": {}, "escape_string_warning": {},
	"log_min_duration_statement": {}, "log_statement": {}, "log_min_messages": {}, "log_min_error_statement": {},
	"synchronous_commit": {}, "commit_delay": {}, "commit_siblings": {},
	"check_function_bodies": {}, "default_tablespace": {}, "temp_tablespaces": {},
	"default_table_access_method": {}, "default_toast_compression": {},
}

// setsPath reports whether t, a setting's name in SET, names the
// search_path: as itself, or as SET [LOCAL | SESSION] SCHEMA 'value', the
// grammar's other spelling of it (a setting schema.x is another, but is
// taken for it).
func setsPath(t token) bool { return nameIs(t, "search_path") || t.is("schema") }

// setsSeed reports whether t names the setting seed in SET [LOCAL |
// SESSION] or RESET (not a setting seed.x).
func (c *classifier) setsSeed(t token) bool {
	if !nameIs(t, "seed") || !(c.first.is("set") || c.first.is("reset")) || !c.atSettingName() {
		return false
	}
	l := c.lx
	return l.next().kind != tDot
}

// atSettingName reports whether the token at c.pos is where SET [LOCAL |
// SESSION] (or RESET) names its setting.
func (c *classifier) atSettingName() bool {
	return c.pos == 1 || c.pos == 2 && (c.p1.is("local") || c.p1.is("session"))
}

// setForm reads the word after SET. SET LOCAL, SET TRANSACTION (this
// transaction's modes) and SET CONSTRAINTS last as long as the
// transaction; every other form sets the session. Those three words, and
// SESSION, are keywords only where no dot, = or TO follows them: SET
// local.tenant = '7' sets a setting named local.tenant.
func (c *classifier) setForm(t token) {
	l := c.lx
	n := l.next()
	keyword := n.kind != tDot && !(n.kind == tOp && n.text == "=") && !n.is("to")
	if keyword && (t.is("local") || t.is("transaction") || t.is("constraints")) {
		if t.is("local") {
			c.sk |= kindTxSet
		}
		return
	}
	c.sk |= kindSessionState | kindSetting
}

// readWord looks in a statement that reads for words that write.
func (c *classifier) readWord(t token) {
	var a [24]byte
	w, ok := lower(a[:0], t.text)
	if !ok {
		return
	}
	own := c.dml && c.depth == 0
	switch string(w) {
	case "update":
		// FOR UPDATE, FOR NO KEY UPDATE lock rows for the transaction.
		if !c.p1.is("for") && !c.p1.is("key") {
			c.sk |= kindState | kindCode
			// An UPDATE's first word, and an INSERT's ON CONFLICT DO
			// UPDATE, which updates its table.
			c.dmlOther = c.dmlOther || !(own && (c.pos == 0 || c.p1.is("do") && c.first.is("insert")))
		}
	case "insert", "delete", "merge":
		c.sk |= kindState | kindCode
		c.dmlOther = c.dmlOther || !(own && c.pos == 0)
	case "into":
		c.sk |= kindState
		c.intoAt = c.pos
		c.dmlOther = c.dmlOther || !(own && c.pos == 1 && c.first.is("insert"))
	}
}

// call looks at the name before an opening parenthesis: a function
// called, unless the grammar reads it otherwise.
func (c *classifier) call() {
	n := c.p1
	if c.first.kind == tEOF {
		return // "(SELECT …", "EXPLAIN VERBOSE (SELECT …"
	}
	if n.kind != tWord && n.kind != tQuoted && n.kind != tOpaque {
		return
	}
	if c.depth == 0 && c.first.is("insert") && c.obj.is("into") && (c.pos == 3 || c.pos == 5 && c.p2.kind == tDot) {
		return // INSERT INTO [schema.]name (columns)
	}
	if c.p2.kind == tDot {
		// schema.name(…): a built-in only as pg_catalog.name.
		q := c.p3
		if n.kind != tOpaque && (q.is("pg_catalog") || q.kind == tQuoted && q.text == "pg_catalog") {
			c.builtin(n.text, n.kind == tWord)
			return
		}
		c.ck |= kindState | kindCode
		if n.kind == tOpaque || among(unresettable, n.text, n.kind == tWord) {
			c.ck |= kindSessionState | kindPoison
		}
		return
	}
	if n.is("treat") {
		// TREAT(expr AS name) calls pg_catalog's function of the type
		// name's last part (setseed, nextval, pg_advisory_lock…), which
		// the text spells as a type: taken for any function, whose state
		// may be what no reset undoes.
		c.ck |= kindSessionState | kindCode | kindPoison
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
	case n.is("conflict") && p.is("on"):
		// ON CONFLICT (columns) DO …, or a function conflict called in a
		// JOIN's ON: told by a DO right after the ) (see conflictAt).
		if c.conflictAt > 0 {
			c.conflictCall = true // the last had no DO after it
		}
		c.conflictAt, c.conflictDep = c.ntok, c.depth+1
		return
	case p.operand() && c.opCloseAt != c.ntok-2 && !nameIs(p, "path") || p.is("as"):
		// An alias with column names: FROM t AS x(a, b), FROM t x(a);
		// count(*) FILTER (…), … OVER (…), t JOIN (…). (Not after
		// XMLTABLE's PATH, an identifier that takes an expression: a
		// name after it is a call's.)
		return
	case n.is("join") && (p.is("left") || p.is("right") || p.is("full") || p.is("inner") ||
		p.is("outer") || p.is("cross") || p.is("natural")):
		return
	case n.is("varying") && (p.is("character") || p.is("char") || p.is("bit") || p.is("national")):
		return
	case n.is("materialized") && p.is("not") && c.p3.is("as"):
		return // WITH x AS NOT MATERIALIZED (…)
	case p.is("execute"):
		return // EXECUTE name (parameters)
	case n.kind == tOpaque:
		// Its name is not decoded: it may be setseed.
		c.ck |= kindSessionState | kindCode | kindPoison
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
			c.ck |= kindSessionState // one at a time
			return
		}
		c.cfgDepth, c.cfgArg, c.cfgToks, c.cfgTrue = c.depth+1, 0, 0, false
	case among(unresettable, name, folded):
		c.ck |= kindSessionState | kindPoison
	case harmless(name, folded):
	case sessionLock(name, folded):
		c.ck |= kindSessionState
	case among(sequenceWriters, name, folded):
		c.ck |= kindState
	case among(sequenceReaders, name, folded):
		c.ck |= kindSeqRead
	default:
		c.ck |= kindState | kindCode
	}
}

// unresettable are the functions that leave in the session what no reset
// undoes: the seed of random(), a dblink connection, a temporary
// replication slot (made or copied), a replication origin set up for the
// session, a backup under way, a library loaded. They are told by name in any schema (dblink's is the
// extension's).
var unresettable = []string{
	"setseed", "dblink_connect", "dblink_connect_u",
	"pg_create_physical_replication_slot", "pg_create_logical_replication_slot",
	"pg_copy_physical_replication_slot", "pg_copy_logical_replication_slot",
	"fmgr_c_validator", // loads the library, as LOAD does
	"pg_replication_origin_session_setup", "pg_backup_start", "pg_start_backup",
}

// sequenceWriters leave sequence state and run no other code;
// sequenceReaders read it.
var (
	sequenceWriters = []string{"nextval", "setval"}
	sequenceReaders = []string{"currval", "lastval"}
)

// noOneArgument are the built-ins of attribute's lists that take no
// call of one argument (lastval(), setval(s, v), pg_advisory_unlock_all()),
// so that a name after a dot is not theirs.
var noOneArgument = []string{"lastval", "setval", "pg_advisory_unlock_all"}

// sessionLockBuiltins take or give back session advisory locks and run no
// other code.
var sessionLockBuiltins = []string{
	"pg_advisory_lock", "pg_advisory_lock_shared", "pg_try_advisory_lock", "pg_try_advisory_lock_shared",
	"pg_advisory_unlock", "pg_advisory_unlock_shared", "pg_advisory_unlock_all",
}

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
			c.ck |= kindSessionState | kindSetting
		} else {
			c.ck |= kindTxSet
		}
		c.cfgDepth, c.cfgPath = 0, false
	case t.kind == tComma && c.depth == c.cfgDepth:
		if c.cfgArg == 0 && (c.cfgToks != 1 || !c.cfgPlain) {
			// A name computed ($1, lower('SEED'), 'se' || 'ed') or
			// written with escapes: it may be search_path, or seed,
			// whose state no reset undoes (and a search_path naming
			// pg_temp, refused under TransactionPooling).
			c.ck |= kindResolve | kindSessionState | kindPoison
		}
		if c.cfgArg == 1 && c.cfgPath && (c.cfgToks != 1 || !c.cfgPlain || pathLate(c.cfgValue)) {
			c.ck |= kindPathLate
		}
		if c.cfgArg == 1 && c.cfgPath && (c.cfgToks != 1 || !c.cfgPlain) {
			// A search_path computed ('pg_' || 'temp', $1): it may name
			// pg_temp.
			c.ck |= kindSessionState
		}
		c.cfgArg++
		c.cfgToks, c.cfgTrue = 0, false
	default:
		v, known := t.value()
		if c.cfgArg == 0 && c.cfgToks == 0 && t.kind == tString && known {
			switch {
			case strings.EqualFold(v, "seed"):
				c.ck |= kindSessionState | kindPoison // see second
			case strings.EqualFold(v, "search_path"):
				c.cfgPath = true
				c.ck |= kindResolve
			case strings.EqualFold(v, "role") || strings.EqualFold(v, "session_authorization"), !parseNeutral(v):
				c.ck |= kindResolve // see setsParsing
			}
		}
		c.cfgPlain = c.cfgToks == 0 && t.kind == tString && known && strings.IndexByte(v, '\\') < 0
		c.cfgValue = v
		c.cfgCoded = c.cfgToks == 0 && t.kind == tString && !known
		c.cfgToks++
		c.cfgTrue = c.depth == c.cfgDepth && (t.is("true") ||
			t.kind == tString && known && (strings.EqualFold(v, "true") || strings.EqualFold(v, "t") || strings.EqualFold(v, "on")))
	}
}
