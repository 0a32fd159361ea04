package dbctx

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// pgx's simple protocol (and its QueryExecModeSimpleProtocol) puts each
// argument into the statement's text, as a quoted literal, where its own
// reading of the text finds a placeholder (internal/sanitize in
// github.com/jackc/pgx/v5). That reading is not PostgreSQL's: it takes
// E'…' after any word ending in e (name'…' is a constant typed name to
// PostgreSQL, a plain string) and opens a dollar quote inside an
// identifier (x$a$). Where it puts an argument in what PostgreSQL reads
// as a string, a comment or an identifier, the argument's quotes end
// that and the argument's text runs as SQL: splicedElsewhere tells.

// splicedElsewhere reports whether pgx's reading of l's text finds a
// placeholder where l, PostgreSQL's reading, finds none.
func splicedElsewhere(l lexer) bool {
	var ours []int
	l.i = 0
	for {
		t := l.next()
		if t.kind == tEOF || t.kind == tBad {
			break
		}
		if t.kind == tParam {
			ours = append(ours, l.i-len(t.text))
		}
	}
	for _, at := range pgxPlaceholders(l.q) {
		if !slices.Contains(ours, at) {
			return true
		}
	}
	return false
}

// pgxPlaceholders returns where the $ of each placeholder is that pgx's
// sanitizer finds in q: a transcription of its lexer (pgx v5.12's
// internal/sanitize: rawState and the states it goes to), which stops at
// the first byte that is not UTF-8, or at an unterminated quote or
// comment, as it does.
func pgxPlaceholders(q string) []int {
	var at []int
	i := 0
	// next decodes the rune at i; ok false at the end or at a byte that is
	// not UTF-8, where pgx's lexer stops.
	next := func() (r rune, ok bool) {
		r, w := utf8.DecodeRuneInString(q[i:])
		if r == utf8.RuneError && w != 3 {
			return r, false
		}
		i += w
		return r, true
	}
	peek := func() rune {
		r, _ := utf8.DecodeRuneInString(q[i:])
		return r
	}
	// quoted skips to the end of a '…' or "…" (a doubled quote in it),
	// or, with backslashes, an E'…' (a backslash escapes the next
	// character).
	quoted := func(quote rune, backslashes bool) bool {
		for {
			r, ok := next()
			switch {
			case !ok:
				return false
			case r == '\\' && backslashes:
				_, w := utf8.DecodeRuneInString(q[i:]) // whatever it is, as pgx's
				i += w
			case r == quote:
				if peek() != quote {
					return true
				}
				i += utf8.RuneLen(quote)
			}
		}
	}
	for {
		r, ok := next()
		if !ok {
			return at
		}
		switch r {
		case 'e', 'E':
			if peek() == '\'' {
				i++
				if !quoted('\'', true) {
					return at
				}
			}
		case '\'', '"':
			if !quoted(r, false) {
				return at
			}
		case '$':
			if c := peek(); c >= '0' && c <= '9' {
				at = append(at, i-1)
				for i < len(q) && q[i] >= '0' && q[i] <= '9' {
					i++
				}
				continue
			}
			if n, ok := pgxDollarTag(q[i:]); ok {
				closer := "$" + q[i:i+n] + "$"
				i += n + 1
				j := strings.Index(q[i:], closer)
				if j < 0 {
					return at
				}
				i += j + len(closer)
			}
		case '-':
			if peek() == '-' {
				i++
				for {
					r, ok := next()
					if !ok {
						return at
					}
					if r == '\n' || r == '\r' {
						break
					}
				}
			}
		case '/':
			if peek() == '*' {
				i++
				nested := 0
			comment:
				for {
					r, ok := next()
					switch {
					case !ok:
						return at
					case r == '/' && peek() == '*':
						i++
						nested++
					case r == '*' && peek() == '/':
						i++
						if nested == 0 {
							break comment
						}
						nested--
					}
				}
			}
		}
	}
}

// pgxDollarTag is pgx's scanDollarQuoteTag: the length of the tag of a
// dollar quote at the start of src (just past its first $), and whether
// one is there.
func pgxDollarTag(src string) (int, bool) {
	for i := 0; i < len(src); {
		r, w := utf8.DecodeRuneInString(src[i:])
		switch {
		case r == '$':
			return i, true
		case r == '_', 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', r >= 0x80 && r != utf8.RuneError:
		case i > 0 && '0' <= r && r <= '9':
		default:
			return 0, false
		}
		i += w
	}
	return 0, false
}
