package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/jackc/pgx/v5"
)

// A handler's goroutines share the request's scope, each with a tenant of
// its own, and outlive the request: the handler answers while they are at
// it (which the package doc says not to do). Under middleware.DB their
// statements after the request's end fail with ErrScopeEnded or the
// request context's end, never hang, race or panic, and those that
// answered saw their own tenant; under middleware.Atomic, fn's goroutines
// (the handler's, with its context) commit with the request, and
// PostgreSQL holds their rows exactly when the response says 200. The
// next request's scope finds no session state of theirs.
func TestRequestEndsUnderGoroutines(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	createTable(t, env)
	var left sync.WaitGroup
	var steps atomic.Int64
	var mu sync.Mutex
	var problems []string
	problem := func(f string, a ...any) {
		mu.Lock()
		problems = append(problems, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	ok := func(err error) bool {
		return err == nil || errors.Is(err, dbctx.ErrScopeEnded) || errors.Is(err, dbctx.ErrConnBusy) ||
			errors.Is(err, context.Canceled) || errors.Is(err, dbctx.ErrSessionLost)
	}
	var id atomic.Int64
	work := func(ctx context.Context, g int) {
		tn := fmt.Sprintf("t%d", g)
		c := tenant.With(ctx, tn)
		s := dbctx.From(c)
		for range 40 {
			steps.Add(1)
			var got string
			err := s.QueryRowContext(c, "SELECT current_setting('app.tenant', true)").Scan(&got)
			if err == nil && got != tn {
				problem("goroutine %d saw tenant %q", g, got)
			}
			if !ok(err) {
				problem("QueryRowContext: %v", err)
			}
			if rows, err := s.Query(c, "SELECT current_setting('app.tenant', true) FROM generate_series(1, 2000)"); err == nil {
				for rows.Next() {
					if err := rows.Scan(&got); err == nil && got != tn {
						problem("goroutine %d's rows saw tenant %q", g, got)
					}
				}
				rows.Close()
				if err := rows.Err(); !ok(err) && err.Error() != "dbctx: rows closed by the scope (a boundary, or the end of their Atomic) before they were read to the end" {
					problem("rows: %v", err)
				}
			} else if !ok(err) {
				problem("Query: %v", err)
			}
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			if err := s.SendBatch(c, b).Close(); !ok(err) && err.Error() != "dbctx: batch results closed" {
				problem("SendBatch: %v", err)
			}
			if errors.Is(err, dbctx.ErrScopeEnded) || c.Err() != nil {
				return
			}
		}
	}
	// middleware.DB: the handler answers once its goroutines are halfway.
	h := middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		half := steps.Load() + 4*20
		for g := range 4 {
			left.Go(func() { work(r.Context(), g) })
		}
		if err := dbtest.Wait(30*time.Second, func() bool { return steps.Load() >= half }); err != nil {
			problem("the goroutines never got halfway")
		}
		w.Write([]byte("answered"))
	}))
	// middleware.Atomic: fn's goroutines, then the commit.
	atomicH := middleware.DB(p)(middleware.Atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				n := id.Add(1)
				if _, err := dbctx.From(r.Context()).ExecContext(r.Context(), "INSERT INTO t VALUES ($1)", n); err != nil {
					problem("INSERT in Atomic: %v", err)
				}
			})
		}
		wg.Wait()
		w.Write([]byte("ok"))
	})))
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/atomic" {
			atomicH.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(w, r)
	}))
	for range 4 {
		if code, body, _ := get(t, srv.URL+"/"); code != 200 {
			t.Fatalf("%d %s", code, body)
		}
		dbtest.NoHang(t, "the handler's goroutines after the request", left.Wait)
		if code, body, _ := get(t, srv.URL+"/atomic"); code != 200 {
			t.Fatalf("Atomic: %d %s", code, body)
		}
	}
	for _, pr := range problems {
		t.Error(pr)
	}
	if n := countRows(t, env); int64(n) != id.Load() {
		t.Errorf("%d rows committed, the 200s reported %d", n, id.Load())
	}
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		var tn string
		if err := s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.tenant', true), '')").Scan(&tn); err != nil {
			return err
		}
		if tn != "" {
			return fmt.Errorf("the next scope sees app.tenant %q", tn)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
