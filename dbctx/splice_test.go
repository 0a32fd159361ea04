package dbctx

import (
	"context"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/pgxsanitize"
	"github.com/jackc/pgx/v5"
)

// pgxPieces are the bytes and runes pgx's sanitizer and PostgreSQL's
// lexer turn on, for texts built at random.
var pgxPieces = []string{
	"$1", "$2", "$12", "$0", "$", "$$", "$a$", "$a", "a$", "$_1$", "$1$", "$é$", "$\uFFFD$",
	"'", "''", `"`, `""`, "e'", "E'", "ne'", "U&'", `\`, `\'`, "--", "\n", "\r",
	"/*", "*/", "/", "*", "-", "x", "e", "E", " ", "9", ";", "SET a.b = 1",
	"\xff", "\xe2\x82", "é", "\uFFFD", "\x00",
}

func randomPgxText(r *rand.Rand) string {
	var b strings.Builder
	for n := r.IntN(12); n >= 0; n-- {
		b.WriteString(pgxPieces[r.IntN(len(pgxPieces))])
	}
	return b.String()
}

// pgxSeeds are texts where pgx's sanitizer and PostgreSQL part ways, and
// some of pgx's own fuzz seeds (internal/sanitize/sanitize_fuzz_test.go).
var pgxSeeds = []string{
	"select $1", "select $1, $2, $3", "$1", "$0", "$$", "$", "$abc",
	"select 'quoted $42', $1", "select 'foo''bar', $1", "'unterminated",
	`select "doubled quoted $42", $1`, `"unterminated`,
	"select E'escape \\'string', $1", "select e'lower case escape \\' $1', $2",
	"E'backslash at end\\", "E'\\''", "select $$ $1 $$, $2", "select $tag$ $1 $tag$, $2",
	"select $tag$ $1 $other$ $1 $tag$, $2", "select x$a$ $1 $a$, $2", "select $1a$ $2 $a$",
	"-- $1\nselect $2", "/* $1 /* $2 */ $3 */ $4", "select name'\\'' , $1 ; --'",
	"select $1\xff$2", "select '\xff' $1", "select $9999999999999999999999",
}

func checkPgxPlaceholders(t *testing.T, q string) {
	t.Helper()
	got, want := pgxPlaceholders(q), pgxsanitize.Placeholders(q)
	if !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("%q: pgxPlaceholders %v, pgx's sanitizer %v", q, got, want)
	}
}

// TestPgxPlaceholdersIsPgx checks the transcription of pgx's lexer
// against pgx's own, reached through internal/pgxsanitize, on its seeds
// and on texts built at random from what either lexer turns on.
func TestPgxPlaceholdersIsPgx(t *testing.T) {
	for _, q := range pgxSeeds {
		checkPgxPlaceholders(t, q)
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200000 {
		checkPgxPlaceholders(t, randomPgxText(r))
	}
}

func FuzzPgxPlaceholders(f *testing.F) {
	for _, q := range pgxSeeds {
		f.Add(q)
	}
	f.Fuzz(checkPgxPlaceholders)
}

// TestSplicedTextReadsAsItsStatement checks what splicedElsewhere is for,
// with pgx's own sanitizer: where readQuery finds no stray placeholder,
// the text pgx's simple protocol sends, whatever its arguments hold, may
// do nothing to the session that the statement's text was not taken to
// do.
func TestSplicedTextReadsAsItsStatement(t *testing.T) {
	args := []any{"'; SET app.tenant = 'x'; --", "$$; SELECT pg_advisory_lock(1); $$", "*/ SET role x; /*"}
	r := rand.New(rand.NewPCG(3, 4))
	tried := 0
	for range 200000 {
		q := randomPgxText(r)
		_, stray := readQuery(q)
		if stray || !utf8.ValidString(q) {
			// PostgreSQL refuses text that is not UTF-8 (pgx's simple
			// protocol runs only with client_encoding UTF8).
			continue
		}
		// pgx's simple protocol runs only with standard_conforming_strings
		// on: the reading without escapes is PostgreSQL's.
		k := classifyAs(q, false, splitBytes)
		n := 0
		for _, at := range pgxsanitize.Placeholders(q) {
			d := q[at+1:]
			if d[0] < '1' || d[0] > '3' || len(d) > 1 && isDigit(d[1]) {
				n = -1
				break
			}
			n = max(n, int(d[0]-'0'))
		}
		if n <= 0 {
			continue
		}
		s, err := pgxsanitize.SanitizeSQL(q, args[:n]...)
		if err != nil {
			continue
		}
		if ks := classifyAs(s, false, splitBytes); ks&^k&(kindState|kindAlone) != 0 {
			t.Fatalf("%q (kind %b) sent as %q (kind %b)", q, k, s, ks)
		}
		tried++
	}
	if tried < 1000 {
		t.Fatalf("%d texts tried", tried)
	}
	t.Logf("%d texts sent", tried)
}

// TestPgxSendsWhatItsSanitizerSays checks the oracle of the tests above
// against a real connection: what pgx's simple protocol sends PostgreSQL
// (its pg_stat_activity.query, read by another connection) is what
// internal/pgxsanitize's SanitizeSQL gives, so the sanitizer reached there
// is the one pgx runs.
func TestPgxSendsWhatItsSanitizerSays(t *testing.T) {
	env := pgtest.New(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, env.DirectDSN(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pid := conn.PgConn().PID()
	admin := env.Admin()
	for _, c := range []struct {
		q    string
		args []any
	}{
		{"SELECT $1::text, '$2', $2::text", []any{"a'b", "c"}},
		{"SELECT name'\\'' , $1 ; --'", []any{"'; SELECT 'spliced"}},
		{"SELECT x$a$ $1 $a$, $1::text", []any{"d"}},
		{"SELECT $tag$ $1 $tag$, $1::text /* $2 */", []any{"e"}},
	} {
		want, err := pgxsanitize.SanitizeSQL(c.q, c.args...)
		if err != nil {
			t.Fatalf("%q: %v", c.q, err)
		}
		_, _ = conn.Exec(ctx, c.q, append([]any{pgx.QueryExecModeSimpleProtocol}, c.args...)...) // may fail: what was sent counts
		var got string
		if err := admin.QueryRowContext(ctx, "SELECT query FROM pg_stat_activity WHERE pid = $1", pid).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%q: pgx sent %q, its sanitizer says %q", c.q, got, want)
		}
	}
}
