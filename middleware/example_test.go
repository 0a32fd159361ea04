package middleware_test

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/middleware"
	_ "github.com/jackc/pgx/v5/stdlib"
)

// DB gives every request a scope; handlers query through dbctx.From.
func ExampleDB() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /now", func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		var year int
		err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT extract(year FROM now())::int").Scan(&year)
		if err != nil {
			if middleware.Answer(w, r, err) { // 503 + Retry-After on overload
				return
			}
			http.Error(w, "database error", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, year > 2000)
	})
	handler := middleware.DBWithOpts(pool, &middleware.DBOptions{ServerTiming: true})(mux)

	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest("GET", "/now", nil))
	fmt.Println(rec.Code, rec.Body, strings.HasPrefix(rec.Header().Get("Server-Timing"), "db;dur="))
	// Output: 200 true true
}

// Atomic runs a request in one transaction and sends the response only
// once it has committed.
func ExampleAtomic() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	create := func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		s := dbctx.From(ctx)
		var id int
		// Both statements commit together, or neither does.
		if err := s.QueryRowContext(ctx, "SELECT 1").Scan(&id); err != nil {
			http.Error(w, "database error", http.StatusInternalServerError) // 5xx: rolled back
			return
		}
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]int{"id": id})
	}
	handler := middleware.DB(pool)(middleware.Atomic(http.HandlerFunc(create)))

	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest("POST", "/items", nil))
	fmt.Print(rec.Code, " ", rec.Body)
	// Output: 201 {"id":1}
}

// With Eager, a request takes its worker slot before the handler runs; an
// overloaded pool answers 503 with Retry-After at once.
func ExampleDBOptions_eager() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
	defer pool.Close()

	handler := middleware.DBWithOpts(pool, &middleware.DBOptions{Eager: true})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "served")
		}))

	// Hold the only slot, as a long request would.
	ctx, busy := pool.Scope(httptest.NewRequest("GET", "/", nil).Context())
	busy.Reserve(ctx)
	defer busy.End()

	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
	fmt.Println(rec.Code, rec.Header().Get("Retry-After"))
	// Output: 503 1
}
