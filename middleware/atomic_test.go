package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/jackc/pgx/v5"
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

// Atomic mounted without middleware.DB outside it answers every request
// 500, and says what to mount once, at ERROR (it did for every request: a
// flood under load).
func TestAtomicWithoutDB(t *testing.T) {
	t.Parallel()
	logs, logger := dbtest.NewLogs()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("handler ran without a scope")
	})))
	for range 3 {
		if code, _, _ := get(t, srv.URL); code != http.StatusInternalServerError {
			t.Fatalf("got %d, want 500", code)
		}
	}
	if n := logs.Count(slog.LevelError, "middleware: Atomic needs middleware.DB"); n != 1 {
		t.Fatalf("%d errors logged, want 1:\n%s", n, logs)
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

// A handler whose client goes away before its transaction commits (the
// work done, the handler returning normally) has its transaction rolled
// back, not half-kept: PostgreSQL has no row, its OnCommit does not run,
// and a Debug line says so.
func TestAtomicRollsBackAfterClientLeft(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	inserted := make(chan struct{})
	done := make(chan struct{})
	var committed atomic.Bool
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		dbctx.OnCommit(ctx, func() { committed.Store(true) })
		close(inserted)
		<-ctx.Done() // the client has gone
		fmt.Fprint(w, "ok")
	})
	logs, logger := dbtest.NewLogs()
	srv := serve(t, middleware.DB(p)(middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})(h)))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, nil)
	go func() {
		<-inserted
		cancel()
	}()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	dbtest.NoHang(t, "the handler", func() { <-done })
	dbtest.Eventually(t, "the Debug line", func() bool {
		return logs.Count(slog.LevelDebug, "middleware: Atomic request not committed") == 1
	})
	if errs := logs.AtLeast(slog.LevelWarn); len(errs) > 0 {
		t.Errorf("logged %+v: a client that left is no failure of the server's", errs)
	}
	if n := countRows(t, env); n != 0 || committed.Load() {
		t.Fatalf("%d rows committed, OnCommit ran: %v; want none", n, committed.Load())
	}
}

// A client that leaves mid-statement under Atomic: the statement is
// canceled, the handler answers as Answer does (499), and the transaction
// is rolled back with nothing at Warn or above: no failure of the
// server's.
func TestAtomicClientLeftMidStatement(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	logs, logger := dbtest.NewLogs()
	done := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(done)
		ctx := r.Context()
		for _, q := range []string{"INSERT INTO t VALUES (1)", "SELECT pg_sleep(30)"} {
			if _, err := dbctx.From(ctx).ExecContext(ctx, q); err != nil {
				if !middleware.Answer(w, r, err) {
					http.Error(w, "failed", http.StatusInternalServerError)
				}
				return
			}
		}
	})
	srv := serve(t, middleware.DB(p)(middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})(h)))
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, nil)
	go func() {
		dbtest.Wait(time.Minute, func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") > 0 })
		cancel()
	}()
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
	dbtest.NoHang(t, "the handler", func() { <-done })
	dbtest.Eventually(t, "the Debug line", func() bool {
		return logs.Count(slog.LevelDebug, "middleware: Atomic request not committed") == 1
	})
	if errs := logs.AtLeast(slog.LevelWarn); len(errs) > 0 {
		t.Errorf("logged %+v: a client that left is no failure of the server's", errs)
	}
	if n := countRows(t, env); n != 0 {
		t.Fatalf("%d rows committed, want none", n)
	}
}

// An Atomic whose scope's boundary came while its function ran (DB's
// request ended around it: a TimeoutHandler between DB and Atomic) does
// not report a commit: its OnCommit does not run, and PostgreSQL has no
// row.
func TestAtomicScopeEndedUnderIt(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	dbDone := make(chan struct{})
	handlerDone := make(chan struct{})
	var committed atomic.Bool
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(handlerDone)
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		dbctx.OnCommit(ctx, func() { committed.Store(true) })
		<-dbDone // the request timed out around us, and DB ended the scope
		fmt.Fprint(w, "ok")
	})
	atomicH := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: discardLogger()})(h)
	atomicDone := make(chan struct{})
	timed := http.TimeoutHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(atomicDone)
		atomicH.ServeHTTP(w, r)
	}), 100*time.Millisecond, "timeout")
	inner := middleware.DB(p)(timed)
	srv := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		close(dbDone)
	}))
	if code, _, _ := get(t, srv.URL); code != http.StatusServiceUnavailable {
		t.Errorf("status %d, want TimeoutHandler's 503", code)
	}
	dbtest.NoHang(t, "the handler, and Atomic after it", func() {
		<-handlerDone
		<-atomicDone
	})
	if n := countRows(t, env); n != 0 || committed.Load() {
		t.Fatalf("%d rows committed, OnCommit ran: %v; want neither", n, committed.Load())
	}
}

// A request whose deadline (a timeout middleware's, outside DB) passes
// before its commit: rolled back, answered 503 as http.TimeoutHandler
// answers, logged at Debug (it was an ERROR and a 500: the handler's
// failure), the error said once.
func TestAtomicDeadlinePassed(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	var committed atomic.Bool
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		dbctx.OnCommit(ctx, func() { committed.Store(true) })
		passDeadline(ctx)
		<-ctx.Done()
		fmt.Fprint(w, "ok")
	})
	// The deadline passes once the INSERT has run, however slow the
	// machine: a timer could pass it before.
	deadline := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			next.ServeHTTP(w, r.WithContext(withDeadlineToPass(r.Context())))
		})
	}
	logs, logger := dbtest.NewLogs()
	srv := serve(t, deadline(middleware.DB(p)(middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})(h))))
	resp, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", resp.StatusCode)
	}
	if errs := logs.AtLeast(slog.LevelWarn); len(errs) > 0 {
		t.Errorf("logged %+v: a deadline is no failure of the handler's", errs)
	}
	if s := logs.String(); strings.Count(s, "commit:") > 1 {
		t.Errorf("the error says commit twice: %s", s)
	}
	if n := countRows(t, env); n != 0 || committed.Load() {
		t.Fatalf("%d rows committed, OnCommit ran: %v; want none", n, committed.Load())
	}
}

// A request whose COMMIT PostgreSQL ran, its answer lost with the
// connection, is not told of as "not committed": it is answered 500 (not
// 503, whose Retry-After invites the retry that would do the work twice),
// and logged at Error as a commit of unknown outcome.
func TestAtomicCommitAnswerLost(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cuts the connection to the server")
	env := pgtest.New(t)
	createTable(t, env)
	px := pgtest.NewProxy(t, env)
	db, err := sql.Open("pgx", px.DSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	p := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, Logger: discardLogger()})
	t.Cleanup(func() { p.Close() })
	logs, logger := dbtest.NewLogs()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, middleware.DB(p)(atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := dbctx.From(r.Context()).ExecContext(r.Context(), "INSERT INTO t VALUES (7)"); err != nil {
			middleware.Answer(w, r, err)
			return
		}
		px.Mute() // the COMMIT reaches the server, its answer does not come back
		w.WriteHeader(http.StatusCreated)
	}))))
	go func() {
		// Once PostgreSQL holds the row, the connection goes (not
		// t.Fatal here: another goroutine than the test's).
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			var n int
			if env.Admin().QueryRow("SELECT count(*) FROM "+env.Schema()+".t").Scan(&n) == nil && n == 1 {
				break
			}
		}
		px.Cut()
	}()
	code, _, h := do(t, http.MethodPost, srv.URL)
	if code != http.StatusInternalServerError || h.Get("Retry-After") != "" || countRows(t, env) != 1 {
		t.Fatalf("got %d (Retry-After %q) with %d rows, want 500 with no Retry-After, 1 row", code, h.Get("Retry-After"), countRows(t, env))
	}
	if n := logs.Count(slog.LevelError, "middleware: Atomic request's commit outcome unknown"); n != 1 {
		t.Errorf("logged %d times as of unknown outcome: %+v", n, logs.Records())
	}
}

// DB mounted again inside Atomic (a router's DB, then a route's) keeps the
// request's one scope of the pool: the handler's statements are in the
// transaction, and a 5xx rolls them back.
func TestDBMountedTwice(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{Logger: discardLogger()})
	createTable(t, env)
	atomicMW := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: discardLogger()})
	var same atomic.Bool
	srv := serve(t, middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		outer := dbctx.From(r.Context())
		atomicMW(middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := dbctx.From(r.Context())
			same.Store(s == outer)
			if _, err := s.ExecContext(r.Context(), "INSERT INTO t VALUES (1)"); err != nil {
				middleware.Answer(w, r, err)
				return
			}
			http.Error(w, "rolled back", http.StatusInternalServerError)
		}))).ServeHTTP(w, r)
	})))
	if code, _, _ := get(t, srv.URL); code != http.StatusInternalServerError {
		t.Fatalf("got %d, want the handler's 500", code)
	}
	if !same.Load() {
		t.Error("the inner DB made a scope of its own")
	}
	if n := countRows(t, env); n != 0 {
		t.Errorf("%d rows: the handler's INSERT escaped the rolled-back transaction", n)
	}
}

// deadlineCtx is a context whose deadline passes when passDeadline is
// called on it (or on a context derived from it): Done is closed and Err
// is context.DeadlineExceeded, as under context.WithTimeout, at a point
// of the test's choosing.
type deadlineCtx struct {
	context.Context
	done chan struct{}
	once sync.Once
}

type deadlineKey struct{}

func withDeadlineToPass(parent context.Context) context.Context {
	return &deadlineCtx{Context: parent, done: make(chan struct{})}
}

func (c *deadlineCtx) Deadline() (time.Time, bool) { return time.Now().Add(time.Hour), true }
func (c *deadlineCtx) Done() <-chan struct{}       { return c.done }

func (c *deadlineCtx) Err() error {
	select {
	case <-c.done:
		return context.DeadlineExceeded
	default:
		return nil
	}
}

func (c *deadlineCtx) Value(key any) any {
	if key == (deadlineKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// passDeadline passes the deadline of the deadlineCtx ctx derives from.
func passDeadline(ctx context.Context) {
	c := ctx.Value(deadlineKey{}).(*deadlineCtx)
	c.once.Do(func() { close(c.done) })
}

// A handler that answers a failed statement with a 4xx (a unique
// violation's 409) gets its answer sent, logged at Debug: PostgreSQL
// answers the COMMIT of the failed transaction ROLLBACK, and nothing of it
// was committed, which a 4xx says already. It was replaced by 500 and
// logged at Error for every duplicate a client sent. A 2xx written over
// the failed statement still becomes 500: it would tell of work not done.
func TestAtomicFailedStatementAnswered4xx(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	if _, err := env.Admin().Exec("CREATE TABLE " + env.Schema() + ".u (n int UNIQUE)"); err != nil {
		t.Fatal(err)
	}
	logs, logger := dbtest.NewLogs()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, middleware.DB(p)(atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO u VALUES (2)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO u VALUES (1), (1)"); err == nil {
			http.Error(w, "the duplicate was inserted", http.StatusInternalServerError)
			return
		}
		if r.URL.Query().Has("ignore") {
			w.WriteHeader(http.StatusCreated) // over the failed statement
			return
		}
		http.Error(w, "already exists", http.StatusConflict)
	}))))
	rows := func() (n int) {
		t.Helper()
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".u").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	code, body, _ := get(t, srv.URL)
	if code != http.StatusConflict || !strings.Contains(body, "already exists") {
		t.Errorf("got %d %q, want the handler's 409", code, body)
	}
	if errs := logs.AtLeast(slog.LevelWarn); len(errs) > 0 {
		t.Errorf("logged %+v: the handler answered its statement's failure", errs)
	}
	if n := rows(); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
	if code, body, _ := get(t, srv.URL+"?ignore"); code != http.StatusInternalServerError {
		t.Errorf("a 201 over a failed statement: got %d %q, want 500", code, body)
	}
	if n := rows(); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
}

// A request whose connection was lost before its COMMIT was sent (its
// backend terminated while the handler worked) committed nothing: it is
// answered 503 with Retry-After, as an outage is, and logged at Warn. It
// was a 500, logged at Error as the handler's failure.
func TestAtomicConnectionLostBeforeCommit(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "terminates the server connection under the pooler")
	p, env := newPool(t, nil)
	createTable(t, env)
	logs, logger := dbtest.NewLogs()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, middleware.DB(p)(atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		var pid int
		if err := dbctx.From(ctx).QueryRowContext(ctx, "INSERT INTO t VALUES (1) RETURNING pg_backend_pid()").Scan(&pid); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if _, err := env.Admin().Exec("SELECT pg_terminate_backend($1)", pid); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if err := dbtest.Wait(30*time.Second, func() bool {
			var n int
			return env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n) == nil && n == 0
		}); err != nil {
			http.Error(w, "the backend did not end", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusCreated)
	}))))
	code, body, hdr := get(t, srv.URL)
	if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") == "" {
		t.Errorf("got %d %q (Retry-After %q), want 503 with Retry-After", code, body, hdr.Get("Retry-After"))
	}
	if n := logs.Count(slog.LevelError, ""); n > 0 {
		t.Errorf("logged at Error: %s", logs.String())
	}
	if n := logs.Count(slog.LevelWarn, "middleware: Atomic request not committed: its connection was lost"); n != 1 {
		t.Errorf("%d warnings of the lost connection, want 1: %s", n, logs.String())
	}
	if n := countRows(t, env); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
}

// A panic in a dbctx.Do inside Atomic (recovered by Do, the handler told
// with a *dbctx.PanicError) loses the transaction with its connection,
// which Do discards: no connection failed, so the request is a 500 logged
// at Error, not the 503 with Retry-After of a connection the server or
// the network ended (a retry would meet the same bug).
func TestAtomicDoPanicNotAnOutage(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	createTable(t, env)
	logs, logger := dbtest.NewLogs()
	atomicMW := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, middleware.DB(p)(atomicMW(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			panic("a bug")
		})
		var pe *dbctx.PanicError
		if !errors.As(err, &pe) {
			http.Error(w, "no PanicError", http.StatusInternalServerError)
			return
		}
		http.Error(w, "cannot process", http.StatusUnprocessableEntity)
	}))))
	notAnOutage(t, srv.URL, logs)
	if n := countRows(t, env); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
}

// A scope whose session was lost for a cause of the unit's own before the
// request's Atomic began (a dbctx.Atomic of a middleware outside it ended
// with rows open, its error dropped) refuses the handler's statements with
// dbctx.ErrSessionLost: no connection failed, so the request is a 500, not
// the 503 with Retry-After of an outage. The loss left its cause unset,
// read as a dead connection.
func TestAtomicAfterRowsOpenNotAnOutage(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{Logger: slog.New(slog.DiscardHandler)})
	createTable(t, env)
	logs, logger := dbtest.NewLogs()
	atomicMW := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	rowsOpen := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			var rows *sql.Rows
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				var err error
				rows, err = dbctx.From(ctx).QueryContext(ctx, "SELECT generate_series(1, 3)")
				return err // rows left open
			})
			if !errors.Is(err, dbctx.ErrConnBusy) {
				t.Errorf("Atomic with rows open: %v, want ErrConnBusy", err)
			}
			if rows != nil {
				rows.Close()
			}
			next.ServeHTTP(w, r)
		})
	}
	srv := serve(t, middleware.DB(p)(rowsOpen(atomicMW(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, "cannot process", http.StatusUnprocessableEntity)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})))))
	notAnOutage(t, srv.URL, logs)
	if n := countRows(t, env); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
}

// A statement the handler runs on dbctx.Scope.Pgx's connection with a
// deadline of its own that ends mid-statement (pgx cuts the connection)
// loses the transaction for a cause of the handler's: no connection
// failed, so the request is a 500 logged at Error, not the 503 with
// Retry-After of an outage. Scope.Pgx looked only at its own context,
// which had not ended, and took the cut for a failed connection.
func TestAtomicPgxOwnDeadlineNotAnOutage(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{Logger: slog.New(slog.DiscardHandler)})
	createTable(t, env)
	logs, logger := dbtest.NewLogs()
	atomicMW := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	srv := serve(t, middleware.DB(p)(atomicMW(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		err := dbctx.From(ctx).Pgx(ctx, func(c *pgx.Conn) error {
			sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			_, err := c.Exec(sctx, "SELECT pg_sleep(5)")
			return err
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the statement past its deadline: %v", err)
		}
		http.Error(w, "too slow", http.StatusUnprocessableEntity)
	}))))
	notAnOutage(t, srv.URL, logs)
	if err := dbtest.Wait(10*time.Second, func() bool { return p.Stats().Discarded.Canceled == 1 }); err != nil || p.Stats().Discarded.Broken != 0 {
		t.Errorf("discarded %+v, want one canceled", p.Stats().Discarded)
	}
	if n := countRows(t, env); n != 0 {
		t.Errorf("%d rows committed, want none", n)
	}
}

// notAnOutage asks url, a request whose Atomic lost its transaction for a
// cause of the handler's own, and checks the answer: a 500 without
// Retry-After, the request logged at Error once.
func notAnOutage(t *testing.T, url string, logs *dbtest.Logs) {
	t.Helper()
	code, body, hdr := get(t, url)
	if code != http.StatusInternalServerError || hdr.Get("Retry-After") != "" {
		t.Errorf("got %d %q (Retry-After %q), want 500 without Retry-After", code, body, hdr.Get("Retry-After"))
	}
	if logs.Count(slog.LevelError, "middleware: Atomic request not committed") != 1 {
		t.Errorf("want the request logged at Error: %s", logs.String())
	}
}
