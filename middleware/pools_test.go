package middleware_test

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/middleware"
)

// middleware.DB with two pools (two databases of one server): a request
// uses both, dbctx.From finds the first pool's scope, both are cleaned up
// at the end of the request, and a panic discards both connections.
func TestTwoPools(t *testing.T) {
	t.Parallel()
	p1, env := newPool(t, nil)
	p2 := dbtest.NewSecondPool(t, env, nil)
	var panics atomic.Int64 // net/http's client may retry the request
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if dbctx.From(ctx) != p1.From(ctx) {
			t.Error("dbctx.From is not the first pool's scope")
		}
		var a, b string
		if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT current_database()").Scan(&a); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		if err := p2.From(ctx).QueryRowContext(ctx, "SELECT current_database()").Scan(&b); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		if r.URL.Query().Has("panic") {
			panics.Add(1)
			panic("boom")
		}
		fmt.Fprintf(w, "%s %s", a, b)
	})
	srv := serve(t, middleware.DB(p1, p2)(h))
	code, body, _ := get(t, srv.URL)
	var a, b string
	fmt.Sscan(body, &a, &b)
	if code != http.StatusOK || a == "" || a == b {
		t.Fatalf("got %d %q, want two different databases", code, body)
	}
	for i, p := range []*dbctx.Pool{p1, p2} {
		if st := p.Stats(); st.Pinned != 0 || st.InUse != 0 || st.Acquired != 1 {
			t.Errorf("pool %d after the request: %+v", i+1, st)
		}
	}
	get(t, srv.URL+"?panic")
	if panics.Load() == 0 {
		t.Fatal("the panicking handler never ran")
	}
	for i, p := range []*dbctx.Pool{p1, p2} {
		if st := p.Stats(); st.Discarded.Panic != panics.Load() || st.Pinned != 0 || st.InUse != 0 {
			t.Errorf("pool %d after the panic: %+v", i+1, st)
		}
	}
}
