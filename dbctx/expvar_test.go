package dbctx_test

import (
	"context"
	"expvar"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// Expvar publishes the pool's Stats: expvar's handler serves them as
// JSON, read at every request, not when the var was made.
func TestExpvar(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 3})
	var v expvar.Var = p.Expvar()
	name := "dbctx_test_" + t.Name()
	expvar.Publish(name, v)

	ctx := context.Background()
	for range 2 {
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	_ = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := queryInt(ctx, s, "SELECT 1"); err != nil {
			t.Error(err)
		}
		panic("discard this connection")
	})

	var got dbctx.Stats
	dbtest.Published(t, name, &got)
	want := p.Stats()
	got.Kept, want.Kept = 0, 0 // a kept connection expires by itself
	if got != want {
		t.Errorf("published %+v\nStats()   %+v", got, want)
	}
	if got.MaxWorkers != 3 || got.Acquired < 3 || got.Discarded.Panic != 1 || got.InUse != 0 {
		t.Errorf("published %+v, want 3 slots, 3 or more acquired, 1 discarded for a panic, none in use", got)
	}
}

// Expvar publishes the pool's counters on /debug/vars, beside expvar's
// own memstats and cmdline, for any program that serves
// http.DefaultServeMux or expvar.Handler.
func ExamplePool_Expvar() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 4})
	defer pool.Close()

	expvar.Publish("dbscope", pool.Expvar())
	fmt.Println(expvar.Get("dbscope"))
	// Output:
	// {"MaxWorkers":4,"InUse":0,"Waiting":0,"Pinned":0,"Kept":0,"WaitCount":0,"WaitDuration":0,"WaitsWithin":[0,0,0,0,0,0],"Busy":0,"Misconfigured":0,"Unavailable":0,"Acquired":0,"GivenBack":0,"Retries":0,"Resets":0,"RolledBack":0,"Leaks":0,"Discarded":{"Dead":0,"Broken":0,"Canceled":0,"Tx":0,"Panic":0,"Hook":0,"Reset":0,"Unresettable":0}}
}
