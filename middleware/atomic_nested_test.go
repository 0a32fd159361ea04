package middleware_test

import (
	"log/slog"
	"net/http"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/middleware"
)

// Atomic mounted twice (a router's and a route's): the inner one is a
// savepoint, whose RELEASE PostgreSQL refuses (25P02) after a statement
// of the handler failed. A 4xx the handler wrote for it is sent as
// written, at both levels, logged at Debug, as with Atomic mounted once
// (TestAtomicFailedStatementAnswered4xx); it was 500, logged at ERROR.
// PostgreSQL: no row.
func TestAtomicTwiceFailedStatementAnswered4xx(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	logs, logger := dbtest.NewLogs()
	a := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, middleware.DB(p)(a(a(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if _, err := dbctx.From(ctx).ExecContext(ctx, "SELECT 1/0"); err != nil {
			http.Error(w, "cannot", http.StatusConflict)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})))))
	code, body, _ := get(t, srv.URL)
	if code != http.StatusConflict || body != "cannot\n" {
		t.Errorf("got %d %q, want the handler's 409", code, body)
	}
	if n := logs.Count(slog.LevelWarn, "") + logs.Count(slog.LevelError, ""); n > 0 {
		t.Errorf("logged at Warn or above: %s", logs.String())
	}
	if n := countRows(t, env); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
}
