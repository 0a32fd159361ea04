package dbctx_test

import (
	"reflect"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

// Discards.All yields every field once, by a name of its own, and stops
// when asked.
func TestDiscardsAll(t *testing.T) {
	var d dbctx.Discards
	v := reflect.ValueOf(&d).Elem()
	for i := range v.NumField() {
		v.Field(i).SetInt(int64(1) << i)
	}
	names := map[string]bool{}
	var sum int64
	for name, n := range d.All() {
		if names[name] {
			t.Fatalf("%s yielded twice", name)
		}
		names[name] = true
		sum += n
	}
	if len(names) != v.NumField() || sum != d.Total() || sum != int64(1)<<v.NumField()-1 {
		t.Fatalf("yielded %d reasons summing to %d; Discards has %d fields, Total %d", len(names), sum, v.NumField(), d.Total())
	}
	for range d.All() {
		break // a yield that returns false ends it
	}
}
