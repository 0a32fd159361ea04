// Package pgcorpus reads PostgreSQL's own regression SQL, for the tests
// that let PostgreSQL judge dbctx's classifier of statements: it finds the
// corpus, splits each psql script into the query strings psql would send,
// in order, and makes mutants of statements along the axes of the grammar
// (keywords in every name position, statements wrapped in statements that
// run them, quoting and case, comments between tokens, the lexer's mode
// switched before them).
//
// The corpus is read in place, never copied into the repository: see
// [Dir].
package pgcorpus

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Env names the environment variable that says where the corpus is.
const Env = "DBSCOPE_CORPUS"

// Dir returns the corpus's directory: $DBSCOPE_CORPUS, else shared/corpus
// beside the repository's root (the directory of its go.mod), else
// /work/shared/corpus; "" where none holds pg_regress/.
func Dir() string {
	var dirs []string
	if d := os.Getenv(Env); d != "" {
		dirs = append(dirs, d)
	}
	if wd, err := os.Getwd(); err == nil {
		for d := wd; ; d = filepath.Dir(d) {
			if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
				dirs = append(dirs, filepath.Join(d, "..", "shared", "corpus"))
			}
			if filepath.Dir(d) == d {
				break
			}
		}
	}
	dirs = append(dirs, "/work/shared/corpus")
	for _, d := range dirs {
		if fi, err := os.Stat(filepath.Join(d, "pg_regress")); err == nil && fi.IsDir() {
			return d
		}
	}
	return ""
}

// A File is one script of the corpus.
type File struct {
	Name string // pg_regress/foo.sql
	SQL  string
}

// Files reads the corpus's scripts: pg_regress/ then plpgsql_regress/,
// each by name, with test_setup.sql (the objects the others use) first.
func Files(dir string) ([]File, error) {
	var files []File
	for _, sub := range []string{"pg_regress", "plpgsql_regress"} {
		names, err := filepath.Glob(filepath.Join(dir, sub, "*.sql"))
		if err != nil {
			return nil, err
		}
		sort.Slice(names, func(i, j int) bool {
			a, b := filepath.Base(names[i]), filepath.Base(names[j])
			if (a == "test_setup.sql") != (b == "test_setup.sql") {
				return a == "test_setup.sql"
			}
			return a < b
		})
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, err
			}
			files = append(files, File{Name: sub + "/" + filepath.Base(n), SQL: string(b)})
		}
	}
	if len(files) == 0 {
		return nil, errors.New("pgcorpus: no scripts in " + dir)
	}
	return files, nil
}

// A Step is what psql does next for a script.
type Step struct {
	SQL       string // a query string to send as one simple Query
	Reconnect bool   // \c: end the session and begin another
	Line      int    // where it begins, from 1
}

// Script splits a psql script into steps as psql's own lexer does: a
// query string ends at a semicolon outside parentheses, quotes, comments
// and the BEGIN … END of a CREATE FUNCTION's SQL body, or at a
// meta-command that sends it (\g, \gset, \gexec…); \; joins statements
// into one string; other meta-commands are dropped (variables are not
// substituted: a statement that uses one fails, as it would unset).
// Whether a backslash escapes a quote in '…' depends on the session's
// standard_conforming_strings, which the caller passes to [Script.Next].
type Script struct {
	src  string
	i    int
	line int
}

// NewScript returns a script of src.
func NewScript(src string) *Script { return &Script{src: src, line: 1} }

var sendingMeta = map[string]bool{"g": true, "gx": true, "gset": true, "gexec": true, "gdesc": true, "crosstabview": true, "watch": true}

// Next returns the next step; false at the end of the script. std says
// whether the session's standard_conforming_strings is on.
func (s *Script) Next(std bool) (Step, bool) {
	var buf strings.Builder
	var ids [4]byte
	nids, paren, begin := 0, 0, 0
	startLine := 0
	src := s.src
	flush := func() (Step, bool) {
		q := strings.TrimSpace(buf.String())
		return Step{SQL: q, Line: startLine}, true
	}
	for s.i < len(src) {
		c := src[s.i]
		if startLine == 0 && !isSpace(c) {
			startLine = s.line
		}
		switch {
		case c == '\n':
			s.line++
			if buf.Len() > 0 {
				buf.WriteByte(c)
			}
			s.i++
		case isSpace(c):
			if buf.Len() > 0 {
				buf.WriteByte(c)
			}
			s.i++
		case c == '-' && s.at(1) == '-':
			j := s.i
			for j < len(src) && src[j] != '\n' {
				j++
			}
			if buf.Len() > 0 {
				buf.WriteString(src[s.i:j])
			}
			s.i = j
		case c == '/' && s.at(1) == '*':
			s.copySpan(&buf, blockComment(src, s.i))
		case c == '\'':
			s.copySpan(&buf, stringEnd(src, s.i, !std))
		case (c == 'e' || c == 'E') && s.at(1) == '\'' && !isIdentChar(s.before()):
			s.copySpan(&buf, stringEnd(src, s.i+1, true))
		case (c == 'u' || c == 'U') && s.at(1) == '&' && (s.at(2) == '"' || s.at(2) == '\'') && !isIdentChar(s.before()):
			if s.at(2) == '"' {
				s.copySpan(&buf, quotedEnd(src, s.i+2))
			} else {
				s.copySpan(&buf, stringEnd(src, s.i+2, false))
			}
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X') && s.at(1) == '\'' && !isIdentChar(s.before()):
			s.copySpan(&buf, stringEnd(src, s.i+1, false))
		case c == '"':
			s.copySpan(&buf, quotedEnd(src, s.i))
		case c == '$' && !isIdentChar(s.before()):
			if end := dollarEnd(src, s.i); end > 0 {
				s.copySpan(&buf, end)
			} else {
				buf.WriteByte(c)
				s.i++
			}
		case isIdentStart(c):
			j := s.i
			for j < len(src) && isIdentChar(src[j]) {
				j++
			}
			w := strings.ToLower(src[s.i:j])
			if nids == 0 {
				ids = [4]byte{}
			}
			switch w {
			case "create", "function", "procedure", "or", "replace":
				if nids < len(ids) {
					ids[nids] = w[0]
				}
			}
			nids++
			if ids[0] == 'c' && (ids[1] == 'f' || ids[1] == 'p' || ids[1] == 'o' && ids[2] == 'r' && (ids[3] == 'f' || ids[3] == 'p')) && paren == 0 {
				switch w {
				case "begin":
					begin++
				case "case":
					if begin >= 1 {
						begin++
					}
				case "end":
					if begin > 0 {
						begin--
					}
				}
			}
			buf.WriteString(src[s.i:j])
			s.i = j
		case c == '(':
			paren++
			buf.WriteByte(c)
			s.i++
		case c == ')':
			if paren > 0 {
				paren--
			}
			buf.WriteByte(c)
			s.i++
		case c == ';':
			buf.WriteByte(c)
			s.i++
			if paren == 0 && begin == 0 {
				return flush()
			}
		case c == '\\':
			if s.at(1) == ';' {
				buf.WriteByte(';')
				s.i += 2
				nids = 0
				continue
			}
			name, line := s.meta()
			switch {
			case sendingMeta[name]:
				if strings.TrimSpace(buf.String()) != "" {
					return flush()
				}
			case name == "c" || name == "connect":
				if strings.TrimSpace(buf.String()) != "" {
					return flush() // and \c is dropped: rare enough
				}
				return Step{Reconnect: true, Line: s.line}, true
			case name == "copy" && strings.Contains(strings.ToLower(line), "stdin"):
				s.skipCopyData()
			}
		default:
			buf.WriteByte(c)
			s.i++
		}
	}
	if strings.TrimSpace(buf.String()) != "" {
		return flush()
	}
	return Step{}, false
}

// CopyData returns the lines that follow the current position up to a
// line \. (psql's data for COPY … FROM STDIN, read when the server asks for
// it), and moves past them.
func (s *Script) CopyData() string {
	// The data begins on the line after the statement.
	for s.i < len(s.src) && s.src[s.i] != '\n' {
		s.i++
	}
	if s.i < len(s.src) {
		s.i++
		s.line++
	}
	start := s.i
	for s.i < len(s.src) {
		end := strings.IndexByte(s.src[s.i:], '\n')
		if end < 0 {
			end = len(s.src) - s.i
		}
		line := s.src[s.i : s.i+end]
		next := s.i + end + 1
		if strings.TrimRight(line, "\r") == `\.` {
			data := s.src[start:s.i]
			s.i = min(next, len(s.src))
			s.line++
			return data
		}
		s.i = min(next, len(s.src))
		s.line++
	}
	return s.src[start:]
}

func (s *Script) skipCopyData() { s.CopyData() }

// meta reads a meta-command from its backslash to the end of the line and
// returns its name and arguments.
func (s *Script) meta() (name, args string) {
	j := s.i + 1
	for j < len(s.src) && (isIdentChar(s.src[j]) || s.src[j] == '?' || s.src[j] == '!') {
		j++
	}
	name = s.src[s.i+1 : j]
	end := strings.IndexByte(s.src[j:], '\n')
	if end < 0 {
		end = len(s.src) - j
	}
	args = s.src[j : j+end]
	s.i = j + end
	return name, args
}

func (s *Script) at(k int) byte {
	if s.i+k < len(s.src) {
		return s.src[s.i+k]
	}
	return 0
}

func (s *Script) before() byte {
	if s.i > 0 {
		return s.src[s.i-1]
	}
	return 0
}

// copySpan copies the text from the current position to end into buf.
func (s *Script) copySpan(buf *strings.Builder, end int) {
	span := s.src[s.i:end]
	s.line += strings.Count(span, "\n")
	buf.WriteString(span)
	s.i = end
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' }

func isIdentStart(c byte) bool {
	return c|0x20 >= 'a' && c|0x20 <= 'z' || c == '_' || c >= 0x80
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' || c == '$' }

// blockComment returns the end of the /* … */ comment at i, nested ones
// included (the end of src if unterminated).
func blockComment(src string, i int) int {
	depth := 0
	for i+1 < len(src) {
		switch {
		case src[i] == '/' && src[i+1] == '*':
			depth++
			i += 2
		case src[i] == '*' && src[i+1] == '/':
			depth--
			i += 2
			if depth == 0 {
				return i
			}
		default:
			i++
		}
	}
	return len(src)
}

// stringEnd returns the end of the string constant whose opening quote is
// at i: esc says whether a backslash escapes the next character; a quote
// after whitespace holding a newline continues it.
func stringEnd(src string, i int, esc bool) int {
	for j := i + 1; j < len(src); j++ {
		switch src[j] {
		case '\\':
			if esc {
				j++
			}
		case '\'':
			if j+1 < len(src) && src[j+1] == '\'' {
				j++
				continue
			}
			if k := continuation(src, j+1); k > 0 {
				j = k
				continue
			}
			return j + 1
		}
	}
	return len(src)
}

// continuation is the quote that continues a string constant whose
// closing quote ends before j, or -1 (see PostgreSQL's quotecontinue).
func continuation(src string, j int) int {
	newline := false
	for j < len(src) {
		switch c := src[j]; {
		case c == ' ' || c == '\t' || c == '\f':
			j++
		case c == '\n' || c == '\r':
			newline = true
			j++
		case c == '-' && j+1 < len(src) && src[j+1] == '-':
			for j < len(src) && src[j] != '\n' && src[j] != '\r' {
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

// quotedEnd returns the end of the quoted identifier at i.
func quotedEnd(src string, i int) int {
	for j := i + 1; j < len(src); j++ {
		if src[j] == '"' {
			if j+1 < len(src) && src[j+1] == '"' {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(src)
}

// dollarEnd returns the end of the dollar-quoted string at i, or -1 where
// none begins there.
func dollarEnd(src string, i int) int {
	j := i + 1
	if j < len(src) && src[j] >= '0' && src[j] <= '9' {
		return -1 // $1
	}
	for j < len(src) && src[j] != '$' && isIdentChar(src[j]) {
		j++
	}
	if j >= len(src) || src[j] != '$' {
		return -1
	}
	tag := src[i : j+1]
	end := strings.Index(src[j+1:], tag)
	if end < 0 {
		return len(src)
	}
	return j + 1 + end + len(tag)
}
