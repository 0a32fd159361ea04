package groups_test

import (
	"expvar"
	"fmt"
	"log"

	"github.com/dbscope/dbscope/groups"
)

// Stats publishes on /debug/vars with one expvar.Func, read at every
// request; groups does not import expvar itself, as that import
// registers /debug/vars on http.DefaultServeMux.
func ExampleLayer_Stats() {
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()

	expvar.Publish("dbscope_groups", expvar.Func(func() any { return layer.Stats() }))
	fmt.Println(expvar.Get("dbscope_groups"))
	// Output:
	// {"Groups":0,"Members":0,"Sent":0,"Delivered":0,"Slow":0,"Gaps":0,"Reconnects":0}
}
