package dbctx

import (
	"fmt"

	"github.com/dbscope/dbscope/internal/jsonvar"
)

// Expvar returns the pool's [Stats] as an [expvar.Var]: its String method
// reads Stats at every call and returns it as JSON (WaitDuration in
// nanoseconds), so each read of /debug/vars sees the counters of that
// moment. Publish it once per process and name, as expvar.Publish panics
// on a name taken:
//
//	expvar.Publish("dbscope", pool.Expvar())
//
// The result is a [fmt.Stringer], which is all expvar.Var asks for:
// dbctx does not import expvar, whose import would register /debug/vars
// on [net/http.DefaultServeMux] in every program that uses dbctx.
func (p *Pool) Expvar() fmt.Stringer {
	return jsonvar.Func(func() any { return p.Stats() })
}
