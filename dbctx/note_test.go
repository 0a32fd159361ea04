package dbctx

import (
	"errors"
	"slices"
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
		var s Scope
		s.note(tc.query)
		s.ran(nil) // the statement succeeded
		if s.dirty != tc.dirty || s.stateful != tc.dirty || s.rawTx != tc.rawTx || !slices.Equal(s.preparedNames(), tc.prepared) {
			t.Errorf("note(%q): dirty %v, stateful %v, rawTx %v, prepared %q; want %v, %[6]v, %v, %q",
				tc.query, s.dirty, s.stateful, s.rawTx, s.preparedNames(), tc.dirty, tc.rawTx, tc.prepared)
		}
		// A statement that failed leaves the session as it was: nothing to
		// keep across connections, nothing prepared.
		var f Scope
		f.note(tc.query)
		f.ran(errors.New("failed"))
		if f.stateful || len(f.preparedNames()) > 0 {
			t.Errorf("note(%q) then failure: stateful %v, prepared %q", tc.query, f.stateful, f.preparedNames())
		}
	}
}

func BenchmarkNote(b *testing.B) {
	var s Scope
	for b.Loop() {
		s.note("SELECT id, body FROM messages WHERE room = $1 ORDER BY id DESC LIMIT 50")
	}
}
