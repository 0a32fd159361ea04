package middleware_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
)

func hello(w http.ResponseWriter, r *http.Request) { w.Write([]byte("hello")) }

func benchHandler(b *testing.B, h http.Handler) {
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkBareHandler is the baseline for BenchmarkMiddlewareNoDB.
func BenchmarkBareHandler(b *testing.B) {
	benchHandler(b, http.HandlerFunc(hello))
}

func BenchmarkMiddlewareNoDB(b *testing.B) {
	p := dbctx.New(pgtest.New(b).Open(b), nil)
	benchHandler(b, middleware.DB(p)(http.HandlerFunc(hello)))
}

// BenchmarkRawQueryHandler is the baseline for BenchmarkMiddlewareQuery:
// the same query on a plain *sql.DB with the same connection limits.
func BenchmarkRawQueryHandler(b *testing.B) {
	db := pgtest.New(b).Open(b)
	dbctx.New(db, nil) // same MaxOpenConns and MaxIdleConns
	benchHandler(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int
		if err := db.QueryRowContext(r.Context(), "SELECT 1").Scan(&n); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, n)
	}))
}

func BenchmarkMiddlewareQuery(b *testing.B) {
	p := dbctx.New(pgtest.New(b).Open(b), nil)
	benchHandler(b, middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		var n int
		if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		fmt.Fprint(w, n)
	})))
}
