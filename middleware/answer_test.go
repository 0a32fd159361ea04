package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
)

// queryOrAnswer is a handler written as the package doc says: a
// database error goes to Answer first, and only what Answer leaves is
// logged and answered 500.
func queryOrAnswer(log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		var n int
		if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
			if middleware.Answer(w, r, err) {
				return
			}
			log.Error("request failed", "err", err)
			http.Error(w, "internal", http.StatusInternalServerError)
		}
	}
}

// A database that cannot be connected to is answered by what it is,
// through a handler that follows the documented pattern and through
// Atomic: a misconfiguration with 500, logged once by the pool whatever
// the number of requests and never by the handler; an outage with 503
// and Retry-After, its warnings aggregated into one record.
func TestAnswerConnectFaults(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the faults are injected in the connection string, which names PgBouncer")
	env := pgtest.New(t)
	const requests = 20
	for _, tc := range []struct {
		name string
		dsn  string
		code int
	}{
		{"missing database", env.MissingDatabase(t), http.StatusInternalServerError},
		{"missing role", env.MissingRole(t), http.StatusInternalServerError},
		{"unknown host", env.UnknownHost(t), http.StatusInternalServerError},
		{"refused port", env.Refused(t), http.StatusServiceUnavailable},
	} {
		for _, atomic := range []bool{false, true} {
			name := tc.name
			if atomic {
				name += "/atomic"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				poolLogs, poolLog := dbtest.NewLogs()
				appLogs, appLog := dbtest.NewLogs()
				db, err := sql.Open("pgx", tc.dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				p := dbctx.New(db, &dbctx.Options{Logger: poolLog})
				defer p.Close()
				var h http.Handler = queryOrAnswer(appLog)
				if atomic {
					h = middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: appLog})(h)
				}
				h = middleware.DB(p)(h)
				for i := range requests {
					rec := httptest.NewRecorder()
					h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
					retry := rec.Header().Get("Retry-After")
					if rec.Code != tc.code || (tc.code == http.StatusServiceUnavailable) != (retry == "1") {
						t.Fatalf("request %d: %d, Retry-After %q; want %d", i, rec.Code, retry, tc.code)
					}
				}
				if recs := appLogs.AtLeast(slog.LevelInfo); len(recs) != 0 {
					t.Errorf("the handler logged:\n%s", appLogs)
				}
				errs, warns := len(poolLogs.AtLeast(slog.LevelError)), poolLogs.Count(slog.LevelWarn, "")
				if tc.code == http.StatusInternalServerError && (errs != 1 || warns != 0) ||
					tc.code == http.StatusServiceUnavailable && (errs != 0 || warns != 1) {
					t.Errorf("%d requests: the pool logged %d ERROR, %d WARN records:\n%s", requests, errs, warns, poolLogs)
				}
			})
		}
	}
}

// A closed pool (the server shutting down) is answered 503 with
// Retry-After, whether the request reserved its slot up front (Eager) or
// met the closed pool in its handler: the two paths agree.
func TestAnswerPoolClosed(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	appLogs, appLog := dbtest.NewLogs()
	h := queryOrAnswer(appLog)
	lazy, eager := middleware.DB(p)(h), middleware.DBWithOpts(p, &middleware.DBOptions{Eager: true})(h)
	p.Close()
	for name, h := range map[string]http.Handler{"lazy": lazy, "eager": eager} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" {
			t.Errorf("%s: %d, Retry-After %q; want 503 with Retry-After 1", name, rec.Code, rec.Header().Get("Retry-After"))
		}
	}
	if len(appLogs.Records()) != 0 {
		t.Errorf("the handler logged:\n%s", appLogs)
	}
}

// A client that goes away mid-query is not an error: Answer takes the
// context's error (499, which nobody reads), the handler logs nothing.
func TestAnswerClientGone(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	p, env := newPool(t, nil)
	answered := make(chan bool, 1)
	srv := serve(t, middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		_, err := dbctx.From(ctx).ExecContext(ctx, "SELECT pg_sleep(30)")
		answered <- err != nil && middleware.Answer(w, r, err)
	})))
	ctx, cancel := context.WithCancel(context.Background())
	canceled := dbtest.WhenActive(t, env, "SELECT pg_sleep", cancel)
	defer func() { <-canceled }()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if resp, err := http.DefaultClient.Do(req); err == nil || !errors.Is(err, context.Canceled) {
		if resp != nil {
			resp.Body.Close()
		}
		t.Fatalf("the request went on after its client left: %v", err)
	}
	if !<-answered {
		t.Error("Answer left the error of a client gone to the handler")
	}
}

// A refusal of the pool's (ErrBusy here), answered by Answer in a handler
// or by Atomic itself (its commit failed with it), announces the
// RetryAfter of the DBOptions that mounted the pool, as an Eager refusal
// does: the mount that made the request's scope where DB is mounted
// twice; for Atomic, the pool of its transaction; for Answer with scopes
// of several pools, the longest of their RetryAfter (the error does not
// say whose it is); 1s where the options are unknown.
func TestAnswerRetryAfter(t *testing.T) {
	t.Parallel()
	// OnBegin makes Atomic's BEGIN a round trip of its own, whose ErrBusy
	// fails the transaction's statements and its commit.
	onBegin := func(context.Context, *dbctx.Scope) error { return nil }
	busy, env := newPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1, OnBegin: onBegin})
	other := dbtest.NewSecondPool(t, env, nil)
	// The busy pool's one slot is held for the whole test: every
	// statement of a request gets ErrBusy at once.
	hctx, holder := busy.Scope(context.Background())
	if err := holder.Reserve(hctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(holder.End)

	appLogs, appLog := dbtest.NewLogs()
	// answered goes through Answer; ignored leaves the error for Atomic's
	// commit to meet.
	answered := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := busy.From(ctx).ExecContext(ctx, "SELECT 1"); err != nil {
			if !middleware.Answer(w, r, err) {
				appLog.Error("not answered", "err", err)
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		}
	})
	ignored := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		busy.From(ctx).ExecContext(ctx, "SELECT 1")
		w.Write([]byte("ignored"))
	})
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: appLog})
	db := func(p *dbctx.Pool, retryAfter time.Duration) func(http.Handler) http.Handler {
		return middleware.DBWithOpts(p, &middleware.DBOptions{RetryAfter: retryAfter})
	}
	for _, tc := range []struct {
		name string
		h    http.Handler
		want string
	}{
		{"Answer", db(busy, 30*time.Second)(answered), "30"},
		{"Answer rounds up", db(busy, 1500*time.Millisecond)(answered), "2"},
		{"Answer default", middleware.DB(busy)(answered), "1"},
		{"Answer inside Atomic", db(busy, 30*time.Second)(atomic(answered)), "30"},
		{"Atomic", db(busy, 30*time.Second)(atomic(ignored)), "30"},
		{"Atomic default", middleware.DB(busy)(atomic(ignored)), "1"},
		{"Eager", middleware.DBWithOpts(busy, &middleware.DBOptions{Eager: true, RetryAfter: 30 * time.Second})(answered), "30"},
		{"mounted twice: the outer mount's scope", db(busy, 30*time.Second)(db(busy, 5*time.Second)(answered)), "30"},
		{"two pools: Answer takes the longest", db(other, 5*time.Second)(db(busy, 30*time.Second)(answered)), "30"},
		{"two pools: Answer takes the longest, outer", db(busy, 30*time.Second)(db(other, 5*time.Second)(answered)), "30"},
		{"two pools: Answer cannot tell whose", db(other, 30*time.Second)(db(busy, 5*time.Second)(answered)), "30"},
		{"two pools: Atomic takes its pool's", db(other, 30*time.Second)(db(busy, 10*time.Second)(atomic(ignored))), "10"},
		{"no options known", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, s := busy.Scope(r.Context())
			defer s.End()
			answered.ServeHTTP(w, r.WithContext(ctx))
		}), "1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tc.h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil))
			if got := rec.Header().Get("Retry-After"); rec.Code != http.StatusServiceUnavailable || got != tc.want {
				t.Errorf("%d, Retry-After %q; want 503 with Retry-After %s", rec.Code, got, tc.want)
			}
		})
	}
	if len(appLogs.AtLeast(slog.LevelInfo)) != 0 {
		t.Errorf("logged:\n%s", appLogs)
	}
}
