package pgcorpus

import (
	"fmt"
	"math/rand/v2"
	"strings"
)

// A Mutant is a unit of work to let PostgreSQL judge: query strings sent
// in order on one session, as separate simple Queries.
type Mutant struct {
	Axis string // the axis of the grammar it varies
	SQL  []string
}

// A Token is a span of a statement's text, as PostgreSQL's scanner cuts
// it.
type Token struct {
	Kind byte // 'w' word, 'q' quoted identifier, 's' string, '$' dollar string, 'n' number, 'o' other
	Text string
}

// Tokens cuts stmt into tokens, dropping whitespace and comments; std
// says whether standard_conforming_strings is on.
func Tokens(stmt string, std bool) []Token {
	var out []Token
	for i := 0; i < len(stmt); {
		c := stmt[i]
		at := func(k int) byte {
			if i+k < len(stmt) {
				return stmt[i+k]
			}
			return 0
		}
		end := i + 1
		kind := byte('o')
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '-' && at(1) == '-':
			for i < len(stmt) && stmt[i] != '\n' {
				i++
			}
			continue
		case c == '/' && at(1) == '*':
			i = blockComment(stmt, i)
			continue
		case c == '\'':
			end, kind = stringEnd(stmt, i, !std), 's'
		case (c|0x20 == 'e') && at(1) == '\'':
			end, kind = stringEnd(stmt, i+1, true), 's'
		case (c|0x20 == 'b' || c|0x20 == 'x' || c|0x20 == 'n') && at(1) == '\'':
			end, kind = stringEnd(stmt, i+1, c|0x20 == 'n' && !std), 's'
		case c|0x20 == 'u' && at(1) == '&' && at(2) == '\'':
			end, kind = stringEnd(stmt, i+2, false), 's'
		case c|0x20 == 'u' && at(1) == '&' && at(2) == '"':
			end, kind = quotedEnd(stmt, i+2), 'q'
		case c == '"':
			end, kind = quotedEnd(stmt, i), 'q'
		case c == '$' && dollarEnd(stmt, i) > 0:
			end, kind = dollarEnd(stmt, i), '$'
		case isIdentStart(c):
			for end < len(stmt) && isIdentChar(stmt[end]) {
				end++
			}
			kind = 'w'
		case c >= '0' && c <= '9' || c == '$':
			for end < len(stmt) && (isIdentChar(stmt[end]) || stmt[end] == '.') {
				end++
			}
			kind = 'n'
		}
		out = append(out, Token{Kind: kind, Text: stmt[i:end]})
		i = end
	}
	return out
}

// join puts tokens back together, sep between each two.
func join(toks []Token, sep func(i int) string) string {
	var b strings.Builder
	for i, t := range toks {
		if i > 0 {
			b.WriteString(sep(i))
		}
		b.WriteString(t.Text)
	}
	return b.String()
}

// Variants rewrites stmt without changing what it means to PostgreSQL:
// its words' case, comments and line breaks between any two tokens, its
// string constants continued on another line; and with a change: its
// identifiers quoted (a keyword quoted is a name).
func Variants(stmt string, std bool, r *rand.Rand) []Mutant {
	toks := Tokens(stmt, std)
	if len(toks) == 0 {
		return nil
	}
	var out []Mutant
	// Case.
	cased := make([]Token, len(toks))
	for i, t := range toks {
		cased[i] = t
		if t.Kind == 'w' && !(len(t.Text) == 1 && i+1 < len(toks)) {
			cased[i].Text = flipCase(t.Text, r)
		}
	}
	out = append(out, Mutant{"case", []string{join(cased, func(int) string { return " " })}})
	// Comments and newlines between tokens.
	seps := []string{"/**/", " /* c */ ", "/* /* nested */ */", " -- c\n", "\n", "\t"}
	out = append(out, Mutant{"comments", []string{join(toks, func(int) string { return seps[r.IntN(len(seps))] })}})
	// Strings continued on the next line.
	cont := make([]Token, len(toks))
	changed := false
	for i, t := range toks {
		cont[i] = t
		if t.Kind == 's' && len(t.Text) > 3 && t.Text[len(t.Text)-1] == '\'' {
			body := t.Text[:len(t.Text)-1]
			if k := strings.IndexByte(body, '\''); k >= 0 && k+2 < len(body) {
				// Split after the first character of the body, where no
				// escape or doubled quote can be cut.
				if c := body[k+1]; c != '\\' && c != '\'' && c < 0x80 {
					cont[i].Text = body[:k+2] + "'\n -- c\n'" + body[k+2:] + "'"
					changed = true
				}
			}
		}
	}
	if changed {
		out = append(out, Mutant{"continued", []string{join(cont, func(int) string { return " " })}})
	}
	// Identifiers quoted.
	quoted := make([]Token, len(toks))
	changed = false
	for i, t := range toks {
		quoted[i] = t
		if t.Kind == 'w' && i > 0 && r.IntN(2) == 0 && !(i+1 < len(toks) && toks[i+1].Kind == 's') {
			quoted[i].Text = `"` + strings.ToLower(t.Text) + `"`
			changed = true
		}
	}
	if changed {
		out = append(out, Mutant{"quoted", []string{join(quoted, func(int) string { return " " })}})
	}
	return out
}

func flipCase(w string, r *rand.Rand) string {
	b := []byte(w)
	for i, c := range b {
		if c|0x20 >= 'a' && c|0x20 <= 'z' && r.IntN(2) == 0 {
			b[i] = c ^ 0x20
		}
	}
	return string(b)
}

// Explainable reports whether stmt is of a kind EXPLAIN, PREPARE and
// CREATE … AS take.
func Explainable(stmt string) (explain, prepare, query bool) {
	toks := Tokens(stmt, true)
	for len(toks) > 0 && toks[0].Text == "(" {
		toks = toks[1:]
	}
	if len(toks) == 0 || toks[0].Kind != 'w' {
		return false, false, false
	}
	switch strings.ToLower(toks[0].Text) {
	case "select", "values", "table", "with":
		return true, true, true
	case "insert", "update", "delete", "merge":
		return true, true, false
	case "declare", "execute":
		return true, false, false
	case "create", "refresh":
		for _, t := range toks {
			if t.Kind == 'w' && strings.EqualFold(t.Text, "as") || strings.EqualFold(t.Text, "materialized") {
				return true, false, false
			}
		}
	}
	return false, false, false
}

// explainForms are the spellings of EXPLAIN that run the statement, and
// some that do not.
var explainForms = []string{
	"EXPLAIN ANALYZE %s", "explain analyse verbose %s", "EXPLAIN (ANALYZE) %s",
	"EXPLAIN (ANALYZE true, COSTS off) %s", "EXPLAIN (costs off, analyse, timing off, summary off) %s",
	"EXPLAIN (FORMAT JSON, ANALYZE on) %s", "EXPLAIN (ANALYZE 1) %s", `EXPLAIN ("analyze") %s`,
	"EXPLAIN (ANALYZE false, ANALYZE) %s", "EXPLAIN (ANALYZE 'on') %s", "EXPLAIN %s", "EXPLAIN (ANALYZE off) %s",
	"EXPLAIN VERBOSE %s",
}

// Wrap puts stmt inside statements that run statements: EXPLAIN in its
// forms, PREPARE and EXECUTE (and EXPLAIN ANALYZE EXECUTE, CREATE TABLE …
// AS EXECUTE), CREATE … AS, a data-modifying WITH, DO, a rule. n names
// the objects it creates, so that they do not clash.
func Wrap(stmt string, n int, r *rand.Rand) []Mutant {
	stmt = strings.TrimRight(strings.TrimSpace(stmt), ";")
	explain, prepare, query := Explainable(stmt)
	name := fmt.Sprintf("dbscope_m%d", n)
	var out []Mutant
	if explain {
		for range 2 {
			out = append(out, Mutant{"explain", []string{fmt.Sprintf(explainForms[r.IntN(len(explainForms))], stmt)}})
		}
	}
	if prepare {
		out = append(out,
			Mutant{"prepare, execute", []string{"PREPARE " + name + " AS " + stmt, "EXECUTE " + name}},
			Mutant{"prepare, explain analyze execute", []string{"PREPARE " + name + " AS " + stmt, "EXPLAIN (ANALYZE, COSTS off) EXECUTE " + name}},
		)
	}
	if query {
		out = append(out,
			Mutant{"create temp table as", []string{"CREATE TEMP TABLE " + name + " AS " + stmt}},
			Mutant{"create table as execute", []string{"PREPARE " + name + " AS " + stmt, "CREATE TABLE " + name + " AS EXECUTE " + name}},
			Mutant{"select into temp", []string{"SELECT * INTO TEMP " + name + " FROM (" + stmt + ") s"}},
		)
	}
	if prepare && !query {
		out = append(out,
			Mutant{"with", []string{"WITH " + name + " AS (" + stmt + ") SELECT 1"}},
			Mutant{"rule", []string{
				"CREATE TABLE " + name + " (x int)",
				"CREATE RULE " + name + " AS ON INSERT TO " + name + " DO ALSO " + stmt,
				"INSERT INTO " + name + " VALUES (1)",
			}},
		)
	}
	out = append(out, Mutant{"do", []string{"DO $dbscope$BEGIN EXECUTE " + quoteLiteral(stmt) + "; END$dbscope$"}})
	return out
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ModeSwitch runs stmt after a statement that turns
// standard_conforming_strings off for the transaction, hidden behind a
// string that ends where the backslash says only with it off (with it on,
// stmt is inside the string): PostgreSQL runs stmt, a reader that keeps
// the mode it began with does not see it.
func ModeSwitch(stmt string) []Mutant {
	stmt = strings.TrimRight(strings.TrimSpace(stmt), ";")
	if strings.ContainsAny(stmt, "'\\") || strings.Contains(stmt, "--") {
		return nil // a quote in stmt would end the hiding string
	}
	stmt = strings.Join(strings.Fields(stmt), " ") // a line would end the comment after it
	hidden := `SELECT 'x\''; ` + stmt + " --'"
	shown := `SELECT 'x\'; ` + stmt + "; --'"
	return []Mutant{
		{"mode: set local", []string{"BEGIN", "SET LOCAL standard_conforming_strings = off", hidden, "COMMIT"}},
		{"mode: set_config", []string{"BEGIN", "SELECT set_config('standard_conforming_strings', 'off', true)", hidden, "COMMIT"}},
		{"mode: set local, on", []string{"BEGIN", "SET LOCAL standard_conforming_strings = off", shown, "COMMIT"}},
		{"mode: one string", []string{"BEGIN; SET LOCAL standard_conforming_strings = off; " + shown + "\n; COMMIT"}},
		{"mode: E string continued", []string{"SELECT E'x'\n'\\''; " + stmt + " --'"}},
	}
}

// KeywordSweep fills the name positions of the statements the classifier
// reads with each keyword: custom settings, prepared statements, cursors,
// channels, tables, columns, schemas, EXPLAIN's options and SET's forms.
// PostgreSQL accepts some and refuses the rest.
func KeywordSweep(keywords []string) []Mutant {
	templates := []string{
		"SET %s.x = '1'",
		"SET %s.x TO DEFAULT",
		"SET SESSION %s.x = '1'",
		"SET %s 'public'",
		"SET %s TO '1'",
		"RESET %s",
		"PREPARE %s AS SELECT 1",
		"PREPARE %s (int) AS SELECT $1",
		"DECLARE %s CURSOR WITH HOLD FOR SELECT 1",
		"DECLARE %s NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1",
		"DECLARE c %s CURSOR WITH HOLD FOR SELECT 1",
		"LISTEN %s",
		"CREATE TEMP TABLE %s (x int)",
		"CREATE %s TABLE kw_t (x int)",
		"CREATE TEMP TABLE kw_t (x int) ON COMMIT %s",
		"CREATE TEMP TABLE kw_t (%s int)",
		"CREATE TABLE %s.kw_t (x int)",
		"SELECT 1 AS x INTO %s kw_t",
		"SELECT * INTO TEMP %s FROM (SELECT 1) s",
		"EXPLAIN (%s) CREATE TEMP TABLE kw_t AS SELECT 1",
		"EXPLAIN (ANALYZE %s) SELECT set_config('kw.x', '1', false)",
		"EXPLAIN %s SELECT pg_advisory_lock(1)",
		"SELECT set_config('kw.x', '1', %s)",
		"SELECT %s.set_config('kw.x', '1', false)",
		"SELECT %s('kw.x', '1', false)",
	}
	var out []Mutant
	for _, tmpl := range templates {
		inBlock := strings.Contains(tmpl, "WITHOUT HOLD") || strings.Contains(tmpl, "ON COMMIT")
		for i, kw := range keywords {
			for _, w := range []string{kw, strings.ToUpper(kw), `"` + kw + `"`} {
				if w != kw && i%7 != 0 {
					continue // every seventh keyword in its other spellings too
				}
				q := fmt.Sprintf(tmpl, w)
				m := Mutant{"keyword: " + tmpl, []string{q}}
				if inBlock {
					m.SQL = []string{"BEGIN", q, "COMMIT"}
				}
				out = append(out, m)
			}
		}
	}
	return append(out, TempSchema("pg_temp", "PG_TEMP", `"pg_temp"`)...)
}

// TempSchema makes mutants that create objects in the temporary schema,
// named as each of names: pg_temp, and the session's own pg_temp_N and
// pg_toast_temp_N, quoted or not.
func TempSchema(names ...string) []Mutant {
	var out []Mutant
	for _, w := range names {
		out = append(out,
			Mutant{"temp schema", []string{"CREATE TABLE " + w + ".kw_t (x int)"}},
			Mutant{"temp schema", []string{"CREATE FUNCTION " + w + ".kw_f() RETURNS int LANGUAGE sql AS 'SELECT 1'"}},
			Mutant{"temp schema", []string{"SELECT 1 AS x INTO " + w + ".kw_t"}},
			Mutant{"temp schema", []string{"BEGIN", "SELECT set_config('search_path', '" + strings.Trim(w, `"`) + "', true)", "CREATE TABLE kw_t (x int)", "COMMIT"}},
			Mutant{"temp schema", []string{"BEGIN", "SET LOCAL search_path = " + w, "CREATE SEQUENCE kw_s", "COMMIT"}},
		)
	}
	return out
}
