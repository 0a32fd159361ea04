package dbctx_test

import (
	"expvar"
	"fmt"

	"github.com/dbscope/dbscope/dbctx"
)

// Stats publishes on /debug/vars with one expvar.Func: expvar reads it at
// every request and serves it as JSON (WaitDuration in nanoseconds).
// dbctx does not import expvar itself, as that import registers
// /debug/vars on http.DefaultServeMux in every program that has it.
func ExamplePool_Stats() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 4})
	defer pool.Close()

	expvar.Publish("dbscope", expvar.Func(func() any { return pool.Stats() }))
	fmt.Println(expvar.Get("dbscope"))
	// Output:
	// {"MaxWorkers":4,"InUse":0,"Waiting":0,"Pinned":0,"Kept":0,"WaitCount":0,"WaitDuration":0,"WaitsWithin":[0,0,0,0,0,0],"Busy":0,"Misconfigured":0,"Unavailable":0,"Acquired":0,"GivenBack":0,"Retries":0,"Resets":0,"SequenceResets":0,"RolledBack":0,"OutcomesUnknown":0,"Leaks":0,"Settings":0,"Discarded":{"Dead":0,"Broken":0,"Canceled":0,"Tx":0,"Panic":0,"Hook":0,"Reset":0,"Raw":0,"Unresettable":0}}
}
