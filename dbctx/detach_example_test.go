package dbctx_test

import (
	"context"
	"net/http"

	"github.com/dbscope/dbscope/dbctx"
)

// A handler whose work outlives its request (a stream, a websocket) hands
// it over with Detach: the request's scopes end, their slots and
// connections given back, and the work takes a scope of its own, with the
// request's other values (its tenant, its user).
func ExampleDetach() {
	var pool *dbctx.Pool // the application's
	handler := func(w http.ResponseWriter, r *http.Request) {
		ctx, ok := dbctx.Detach(context.WithoutCancel(r.Context()))
		if !ok {
			http.Error(w, "cannot leave the request's transaction", http.StatusInternalServerError)
			return
		}
		go func() {
			ctx, scope := pool.Scope(ctx)
			defer scope.End()
			_, _ = dbctx.From(ctx).ExecContext(ctx, "SELECT 1")
		}()
	}
	_ = handler
}
