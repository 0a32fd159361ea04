// Package pgxsanitize reaches pgx's own sanitizer (internal/sanitize in
// github.com/jackc/pgx/v5), the code that puts arguments into the text
// in the simple protocol, for tests to check dbctx's reading of where
// pgx puts them against pgx itself rather than against a transcription.
package pgxsanitize

import (
	_ "unsafe" // go:linkname

	_ "github.com/jackc/pgx/v5" // links internal/sanitize
)

// query has the layout of sanitize.Query: Parts holds strings (the text
// as it is) and ints (a placeholder's number).
type query struct {
	Parts []any
}

//go:linkname newQuery github.com/jackc/pgx/v5/internal/sanitize.NewQuery
func newQuery(sql string) (*query, error)

// SanitizeSQL is pgx's sanitize.SanitizeSQL: sql with each placeholder
// pgx reads replaced by its argument, quoted.
//
//go:linkname SanitizeSQL github.com/jackc/pgx/v5/internal/sanitize.SanitizeSQL
func SanitizeSQL(sql string, args ...any) (string, error)

// Placeholders returns where the $ of each placeholder is that pgx's
// sanitizer reads in sql, as a byte offset, in order.
func Placeholders(sql string) []int {
	q, err := newQuery(sql)
	if err != nil {
		panic(err)
	}
	var at []int
	i := 0
	for _, p := range q.Parts {
		switch p := p.(type) {
		case string:
			if len(sql[i:]) < len(p) || sql[i:i+len(p)] != p {
				panic("pgxsanitize: a part is not the text at its place")
			}
			i += len(p)
		case int:
			if sql[i] != '$' {
				panic("pgxsanitize: a placeholder without its $")
			}
			at = append(at, i)
			i++
			for i < len(sql) && sql[i] >= '0' && sql[i] <= '9' {
				i++
			}
		}
	}
	return at
}
