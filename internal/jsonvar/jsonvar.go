// Package jsonvar turns a snapshot function into a value expvar can
// publish, without importing expvar: its import registers /debug/vars on
// net/http's DefaultServeMux, which a library must not do to the programs
// that import it.
package jsonvar

import "encoding/json"

// Func is an expvar.Var (a [fmt.Stringer]) whose String is what the
// function returns, as JSON, read at every call.
type Func func() any

// String returns f() as JSON, or null where it cannot be marshalled.
func (f Func) String() string {
	b, err := json.Marshal(f())
	if err != nil {
		return "null"
	}
	return string(b)
}
