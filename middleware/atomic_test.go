package middleware_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/middleware"
)

func TestAtomic(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name     string
		handler  http.HandlerFunc
		wantCode int
		wantBody string
		wantRows int
	}{
		{"commit", func(w http.ResponseWriter, r *http.Request) {
			insert(w, r, 1)
			w.WriteHeader(http.StatusCreated)
			fmt.Fprint(w, "created")
		}, http.StatusCreated, "created", 1},
		{"5xx rolls back", func(w http.ResponseWriter, r *http.Request) {
			insert(w, r, 1)
			http.Error(w, "handler failed", http.StatusInternalServerError)
		}, http.StatusInternalServerError, "handler failed\n", 0},
		{"4xx commits", func(w http.ResponseWriter, r *http.Request) {
			insert(w, r, 1)
			http.Error(w, "bad input", http.StatusBadRequest)
		}, http.StatusBadRequest, "bad input\n", 1},
		{"failed commit is a 500, never a 200", func(w http.ResponseWriter, r *http.Request) {
			insert(w, r, 1)
			insert(w, r, 1) // the deferred unique constraint fails at commit
			w.Header().Set("Set-Cookie", "session=must-not-leak")
			fmt.Fprint(w, "all good")
		}, http.StatusInternalServerError, "Internal Server Error\n", 0},
		{"flush is held", func(w http.ResponseWriter, r *http.Request) {
			insert(w, r, 1)
			fmt.Fprint(w, "part1 ")
			http.NewResponseController(w).Flush()
			fmt.Fprint(w, "part2")
		}, http.StatusOK, "part1 part2", 1},
		{"too large rolls back", func(w http.ResponseWriter, r *http.Request) {
			insert(w, r, 1)
			if _, err := w.Write(make([]byte, 2048)); err == nil {
				panic("Write past MaxBuffer succeeded")
			}
		}, http.StatusInternalServerError, "Internal Server Error\n", 0},
		{"no database work", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "static")
		}, http.StatusOK, "static", 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, env := newPool(t, nil)
			createTable(t, env)
			atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{MaxBuffer: 1024, Logger: discardLogger()})
			srv := serve(t, middleware.DB(p)(atomic(tc.handler)))
			code, body, hdr := get(t, srv.URL)
			if code != tc.wantCode || body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", code, body, tc.wantCode, tc.wantBody)
			}
			if code >= 500 && strings.Contains(hdr.Get("Set-Cookie"), "must-not-leak") {
				t.Fatal("headers of a failed response reached the client")
			}
			if n := countRows(t, env); n != tc.wantRows {
				t.Fatalf("%d rows committed, want %d", n, tc.wantRows)
			}
		})
	}
}

func insert(w http.ResponseWriter, r *http.Request, n int) {
	ctx := r.Context()
	dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES ($1)", n)
}

func TestAtomicWithoutDB(t *testing.T) {
	t.Parallel()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: discardLogger()})
	srv := serve(t, atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("handler ran without a scope")
	})))
	if code, _, _ := get(t, srv.URL); code != http.StatusInternalServerError {
		t.Fatalf("got %d, want 500", code)
	}
}

type requestIDKey struct{}

// LogAttrs puts the caller's attributes, from the request's context, on
// Atomic's records: here the failed commit's.
func TestAtomicLogAttrs(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	logs, log := dbtest.NewLogs()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: log,
		LogAttrs: func(ctx context.Context) []slog.Attr {
			id, _ := ctx.Value(requestIDKey{}).(string)
			return []slog.Attr{slog.String("request_id", id)}
		}})
	h := middleware.DB(p)(atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		insert(w, r, 1)
		insert(w, r, 1) // the deferred unique constraint fails at commit
	})))
	req := httptest.NewRequest("POST", "/", nil)
	req = req.WithContext(context.WithValue(req.Context(), requestIDKey{}, "req-7"))
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	recs := logs.AtLeast(slog.LevelError)
	if rec.Code != http.StatusInternalServerError || len(recs) != 1 || recs[0].Attrs["request_id"] != "req-7" {
		t.Fatalf("%d; want 500 and one ERROR record with request_id=req-7:\n%s", rec.Code, logs)
	}
}

// A handler whose work is done when its client goes away, and which
// returns without an error status, has its transaction committed, and
// its OnCommit run: PostgreSQL has the row.
func TestAtomicCommitsAfterClientLeft(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	inserted := make(chan struct{})
	committed := make(chan struct{})
	done := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		dbctx.OnCommit(ctx, func() { close(committed) })
		close(inserted)
		<-ctx.Done() // the client has gone
		fmt.Fprint(w, "ok")
	})
	srv := serve(t, middleware.DB(p)(middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: discardLogger()})(h)))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, nil)
	go func() {
		<-inserted
		cancel()
	}()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	dbtest.NoHang(t, "the handler, and its OnCommit", func() {
		<-done
		<-committed
	})
	if n := countRows(t, env); n != 1 {
		t.Fatalf("%d rows committed, want 1", n)
	}
}
