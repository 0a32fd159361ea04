package middleware_test

import (
	"fmt"
	"net/http"
	"strconv"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/sqlcpgx"
	"github.com/dbscope/dbscope/middleware"
)

// sqlc's pgx/v5 code runs on the request's scope, through middleware.DB
// and in middleware.Atomic: a request that fails leaves no row behind, one
// that succeeds commits its rows, and PostgreSQL holds what the responses
// say.
func TestSqlcPgx(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	if _, err := env.Admin().Exec("SET search_path TO " + env.Schema() + "; " + sqlcpgx.Schema); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /items/{name}", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		q := sqlcpgx.New(dbctx.From(ctx))
		it, err := q.CreateItem(ctx, r.PathValue("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if r.URL.Query().Has("fail") {
			http.Error(w, "failed after the insert", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, it.ID)
	})
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		id, _ := strconv.ParseInt(r.PathValue("id"), 10, 64)
		name, err := sqlcpgx.New(dbctx.From(ctx)).GetName(ctx, id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		fmt.Fprint(w, name)
	})
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: discardLogger()})
	srv := serve(t, middleware.DB(p)(atomic(mux)))
	code, id, _ := do(t, http.MethodPost, srv.URL+"/items/kept")
	if code != http.StatusCreated {
		t.Fatalf("POST: %d %s", code, id)
	}
	if code, _, _ := do(t, http.MethodPost, srv.URL+"/items/lost?fail"); code != http.StatusInternalServerError {
		t.Fatalf("failing POST: %d", code)
	}
	if code, body, _ := get(t, srv.URL+"/items/"+id); code != http.StatusOK || body != "kept" {
		t.Fatalf("GET: %d %q", code, body)
	}
	var names []string
	rows, err := env.Admin().Query("SELECT name FROM " + env.Schema() + ".items ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var n string
		rows.Scan(&n)
		names = append(names, n)
	}
	if len(names) != 1 || names[0] != "kept" {
		t.Fatalf("rows in the database: %v, want [kept]", names)
	}
}
