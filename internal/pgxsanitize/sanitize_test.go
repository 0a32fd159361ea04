package pgxsanitize

import (
	"slices"
	"testing"
)

func TestPlaceholders(t *testing.T) {
	for q, want := range map[string][]int{
		"SELECT $1, '$2', $3":   {7, 17},
		"SELECT name'\\'' , $1": {18}, // E'…' after name
		"SELECT x$a$ $1 $a$":    {},
	} {
		if got := Placeholders(q); !slices.Equal(got, want) && !(len(got) == 0 && len(want) == 0) {
			t.Errorf("%q: %v, want %v", q, got, want)
		}
	}
	s, err := SanitizeSQL("SELECT $1", "a'b")
	if err != nil || s != "SELECT  'a''b' " {
		t.Errorf("SanitizeSQL: %q, %v", s, err)
	}
}
