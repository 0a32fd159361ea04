package groups

import (
	"fmt"

	"github.com/dbscope/dbscope/internal/jsonvar"
)

// Expvar returns the layer's [Stats] as an [expvar.Var]: its String
// method reads Stats at every call and returns it as JSON, so each read
// of /debug/vars sees the counters of that moment. Publish it once per
// process and name, as expvar.Publish panics on a name taken:
//
//	expvar.Publish("dbscope_groups", layer.Expvar())
//
// The result is a [fmt.Stringer], which is all expvar.Var asks for:
// groups does not import expvar, whose import would register /debug/vars
// on [net/http.DefaultServeMux] in every program that uses groups.
func (l *Layer) Expvar() fmt.Stringer {
	return jsonvar.Func(func() any { return l.Stats() })
}
