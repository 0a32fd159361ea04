package dbctx

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// The reset tests check against PostgreSQL that dirty sessions are reset;
// this one pins the classification itself, including what must stay clean
// so that ordinary statements cost no reset round trip.
func TestNote(t *testing.T) {
	for _, tc := range []struct {
		query        string
		dirty, rawTx bool
		prepared     []string
	}{
		{query: "SELECT 1"},
		{query: ""},
		{query: "select temperature, attempts from settings"},
		{query: "UPDATE t SET x = 1"},
		{query: "settings"},
		{query: "select 1 -- temp"},
		{query: "select p, _x, pg_temp_1.f()"},
		{query: "advisory_lock(1)", dirty: true},
		{query: "set_config", dirty: true},
		{query: "SET search_path = x", dirty: true},
		{query: " (set local x = 1)", dirty: true},
		{query: "reset all", dirty: true},
		{query: "LISTEN ch", dirty: true},
		{query: "load 'auto_explain'", dirty: true},
		{query: "DECLARE c CURSOR WITH HOLD FOR SELECT 1", dirty: true},
		{query: "select set_config('a.b', 'c', false)", dirty: true},
		{query: "SELECT pg_advisory_lock(1)", dirty: true},
		{query: "SELECT pg_try_ADVISORY_LOCK(1)", dirty: true},
		{query: "create temp table t (x int)", dirty: true},
		{query: "CREATE TEMP\tTABLE t (x int)", dirty: true},
		{query: "CREATE TEMPORARY TABLE t (x int)", dirty: true},
		{query: "begin", rawTx: true},
		{query: "START TRANSACTION", rawTx: true},
		{query: "PREPARE q1 AS SELECT 1", dirty: true, prepared: []string{"q1"}},
		{query: `prepare "Q 2" AS SELECT 1`, dirty: true, prepared: []string{`"Q 2"`}},
	} {
		s := Scope{pool: new(Pool)}
		s.note(tc.query)
		s.ran(nil) // the statement succeeded
		if s.dirty != tc.dirty || s.stateful != tc.dirty || s.rawTx != tc.rawTx || !slices.Equal(s.preparedNames(), tc.prepared) {
			t.Errorf("note(%q): dirty %v, stateful %v, rawTx %v, prepared %q; want %v, %[6]v, %v, %q",
				tc.query, s.dirty, s.stateful, s.rawTx, s.preparedNames(), tc.dirty, tc.rawTx, tc.prepared)
		}
		// A statement that failed leaves the session as it was: nothing to
		// keep across connections, nothing prepared.
		f := Scope{pool: new(Pool)}
		f.note(tc.query)
		f.ran(errors.New("failed"))
		if f.stateful || len(f.preparedNames()) > 0 {
			t.Errorf("note(%q) then failure: stateful %v, prepared %q", tc.query, f.stateful, f.preparedNames())
		}
	}
}

// The cache of classifications answers as classify does, for the same
// string, for a copy of it elsewhere in memory, and for queries sharing
// its slots.
func TestNoteCache(t *testing.T) {
	var c noteCache
	queries := []string{"SELECT 1", "SET x = 1", "begin", "PREPARE q AS SELECT 1", "select set_config('a', 'b', false)"}
	for i := range 3 * noteSlots {
		queries = append(queries, fmt.Sprintf("SELECT %d", i), fmt.Sprintf("SET x = %d", i))
	}
	for round := range 3 {
		for _, q := range queries {
			want := classify(q)
			if got := c.kind(q); got != want {
				t.Fatalf("round %d: kind(%q) = %v, classify says %v", round, q, got, want)
			}
			if got := c.kind(strings.Clone(q)); got != want {
				t.Fatalf("round %d: kind of a copy of %q = %v, classify says %v", round, q, got, want)
			}
		}
	}
	long := "SET x = '" + strings.Repeat("y", noteMaxQuery) + "'"
	if c.kind(long) != kindState {
		t.Fatal("a long SET is not stateful")
	}
}

func BenchmarkNote(b *testing.B) {
	s := Scope{pool: new(Pool)}
	for b.Loop() {
		s.note("SELECT id, body FROM messages WHERE room = $1 ORDER BY id DESC LIMIT 50")
	}
}
