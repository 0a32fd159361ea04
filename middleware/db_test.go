package middleware_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/go-chi/chi/v5"
	"github.com/jackc/pgx/v5"
)

// pidHandler answers the backend that served the request.
func pidHandler(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var pid int
	if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		if middleware.Answer(w, r, err) {
			return
		}
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprint(w, pid)
}

// The middleware works the same on http.ServeMux and on chi.
func TestRouters(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pid", pidHandler)
	r := chi.NewRouter()
	r.Use(middleware.DB(p))
	r.Get("/pid", pidHandler)
	for name, h := range map[string]http.Handler{"ServeMux": middleware.DB(p)(mux), "chi": r} {
		t.Run(name, func(t *testing.T) {
			srv := serve(t, h)
			for range 3 {
				if code, body, _ := get(t, srv.URL+"/pid"); code != http.StatusOK {
					t.Fatalf("%d %s", code, body)
				}
				if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
					t.Fatalf("request end left %+v", st)
				}
			}
		})
	}
}

// A request that never touches the database takes no slot and no
// connection.
func TestNoDBNoConnection(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{ServerTiming: true})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if dbctx.From(r.Context()) == nil {
				t.Error("no scope in the request context")
			}
			fmt.Fprint(w, "ok")
		})))
	if code, body, _ := get(t, srv.URL); code != http.StatusOK || body != "ok" {
		t.Fatalf("%d %s", code, body)
	}
	if st := p.Stats(); st.Acquired != 0 || st.WaitCount != 0 {
		t.Fatalf("a request without DB work took a connection: %+v", st)
	}
}

// A client that goes away mid-query cancels the query on the server and
// frees the slot and the connection.
func TestClientGoneMidQuery(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	p, env := newPool(t, nil)
	srv := serve(t, middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		dbctx.From(ctx).ExecContext(ctx, "SELECT pg_sleep(30)")
	})))
	ctx, cancel := context.WithCancel(context.Background())
	canceled := dbtest.WhenActive(t, env, "SELECT pg_sleep", cancel)
	defer func() { <-canceled }()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request finished although its client left")
	}
	eventually(t, "the query to stop", func() bool { return activeQueries(t, env, "SELECT pg_sleep") == 0 })
	eventually(t, "the scope to end", func() bool {
		st := p.Stats()
		return st.InUse == 0 && st.Pinned == 0
	})
	if st := p.Stats(); st.Discarded.Canceled != 1 {
		t.Errorf("canceled discards = %d, want 1", st.Discarded.Canceled)
	}
}

// A panicking handler leaves nothing behind, inside or outside a
// transaction, and the server keeps serving.
func TestPanic(t *testing.T) {
	t.Parallel()
	for _, atomic := range []bool{false, true} {
		t.Run(fmt.Sprint("atomic=", atomic), func(t *testing.T) {
			t.Parallel()
			p, env := newPool(t, nil)
			createTable(t, env)
			var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx := r.Context()
				if r.URL.Path == "/panic" {
					s := dbctx.From(ctx)
					if !atomic {
						s.BeginTx(ctx, nil)
					}
					s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
					panic("boom")
				}
				pidHandler(w, r)
			})
			if atomic {
				h = middleware.Atomic(h)
			}
			srv := serve(t, middleware.DB(p)(h))
			if code, _, _ := get(t, srv.URL+"/panic"); code != 0 {
				t.Fatalf("a panicking handler answered %d", code)
			}
			if code, body, _ := get(t, srv.URL+"/pid"); code != http.StatusOK {
				t.Fatalf("after the panic: %d %s", code, body)
			}
			if n := countRows(t, env); n != 0 {
				t.Fatalf("%d rows of the panicking request committed", n)
			}
			if st := p.Stats(); st.Discarded.Panic != 1 {
				t.Errorf("panic discards = %d, want 1", st.Discarded.Panic)
			}
		})
	}
}

// A backend killed between two requests costs the second one nothing.
func TestBackendKilledBetweenRequests(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, nil)
	srv := serve(t, middleware.DB(p)(http.HandlerFunc(pidHandler)))
	for i := range 10 {
		if code, body, _ := get(t, srv.URL); code != http.StatusOK {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
		if env.Terminate(t) == 0 {
			t.Fatal("no backend to kill")
		}
	}
}

// With 10× more concurrent requests than slots every answer is 200 or 503
// with Retry-After; none hangs.
func TestOverload(t *testing.T) {
	t.Parallel()
	for _, eager := range []bool{false, true} {
		t.Run(fmt.Sprint("eager=", eager), func(t *testing.T) {
			t.Parallel()
			const slots = 2
			p, _ := newPool(t, &dbctx.Options{MaxWorkers: slots, MaxWaiting: 4, WaitTimeout: 200e6})
			srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{Eager: eager})(
				http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					ctx := r.Context()
					if _, err := dbctx.From(ctx).ExecContext(ctx, "SELECT pg_sleep(0.2)"); err != nil {
						if !middleware.Answer(w, r, err) {
							http.Error(w, err.Error(), http.StatusInternalServerError)
						}
					}
				})))
			var (
				wg    sync.WaitGroup
				mu    sync.Mutex
				codes = map[int]int{}
			)
			for range 10 * slots {
				wg.Go(func() {
					code, body, hdr := get(t, srv.URL)
					if code == http.StatusServiceUnavailable && hdr.Get("Retry-After") != "1" {
						t.Errorf("503 without Retry-After: %v", hdr)
					}
					if code != http.StatusOK && code != http.StatusServiceUnavailable {
						t.Errorf("got %d %s", code, body)
					}
					mu.Lock()
					codes[code]++
					mu.Unlock()
				})
			}
			wg.Wait()
			if codes[http.StatusOK] == 0 || codes[http.StatusServiceUnavailable] == 0 {
				t.Fatalf("answers: %v", codes)
			}
		})
	}
}

var serverTimingRE = regexp.MustCompile(`^db;dur=\d+\.\d{3};desc="2 queries"$`)

func TestServerTiming(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{ServerTiming: true})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			s := dbctx.From(ctx)
			s.ExecContext(ctx, "SELECT 1")
			s.ExecContext(ctx, "SELECT 2")
			fmt.Fprint(w, "ok")
		})))
	code, _, hdr := get(t, srv.URL)
	if got := hdr.Get("Server-Timing"); code != http.StatusOK || !serverTimingRE.MatchString(got) {
		t.Fatalf("%d, Server-Timing %q", code, got)
	}
}

// A batch counts each of its queries: PostgreSQL runs each, as it runs
// statements sent one by one (it counted as one, whatever its size).
func TestServerTimingBatch(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{ServerTiming: true})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			s := dbctx.From(ctx)
			b := &pgx.Batch{}
			for range 3 {
				b.Queue("SELECT pg_catalog.count(*) FROM pg_catalog.pg_class")
			}
			if err := s.SendBatch(ctx, b).Close(); err != nil {
				t.Error(err)
			}
			s.ExecContext(ctx, "SELECT 1")
			fmt.Fprint(w, "ok")
		})))
	code, _, hdr := get(t, srv.URL)
	if got := hdr.Get("Server-Timing"); code != http.StatusOK || !strings.HasSuffix(got, `desc="4 queries"`) {
		t.Fatalf("%d, Server-Timing %q, want 4 queries", code, got)
	}
}

// The wrapper keeps http.Hijacker, so websocket upgrades work through the
// middleware.
func TestHijack(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{ServerTiming: true})(
		http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			conn, brw, err := http.NewResponseController(w).Hijack()
			if err != nil {
				t.Errorf("Hijack: %v", err)
				return
			}
			defer conn.Close()
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nhijacked")
			brw.Flush()
		})))
	if code, body, _ := get(t, srv.URL); code != http.StatusOK || body != "hijacked" {
		t.Fatalf("%d %q", code, body)
	}
}

// The panic reaches an outer recoverer unchanged (http.ErrAbortHandler
// included), after the scope was released.
func TestPanicValueUntouched(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	for _, v := range []any{http.ErrAbortHandler, "boom"} {
		var got any
		var pinned int
		outer := func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer func() {
					got = recover()
					pinned = p.Stats().Pinned
				}()
				next.ServeHTTP(w, r)
			})
		}
		h := outer(middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			pidHandler(httptest.NewRecorder(), r) // pins a connection
			panic(v)
		})))
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/", nil))
		if got != v || pinned != 0 {
			t.Fatalf("recovered %v (pinned %d), want %v with nothing pinned", got, pinned, v)
		}
	}
}

// A handler that leaves a *sql.Row unscanned does not hang its request.
func TestRowNeverScanned(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	srv := serve(t, middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		dbctx.From(ctx).QueryRowContext(ctx, "SELECT g FROM generate_series(1, 100000) g")
		fmt.Fprint(w, "done")
	})))
	if code, body, _ := get(t, srv.URL); code != http.StatusOK || body != "done" {
		t.Fatalf("%d %q", code, body)
	}
	eventually(t, "the scope to end", func() bool {
		st := p.Stats()
		return st.InUse == 0 && st.Pinned == 0
	})
}

// The header counts what a request waited for and ran before its
// response went out: under Atomic, the COMMIT (a deferred trigger makes
// it take 300ms), and with Eager, the wait for the slot (another request
// holds the only one for 300ms). Both were left out.
func TestServerTimingCountsCommitAndWait(t *testing.T) {
	t.Parallel()
	durOf := func(h string) (float64, string) {
		var ms float64
		var n string
		if i := strings.Index(h, "dur="); i >= 0 {
			fmt.Sscanf(h[i+4:], "%f", &ms)
		}
		if i := strings.Index(h, `desc="`); i >= 0 {
			n = strings.TrimSuffix(h[i+6:], `"`)
		}
		return ms, n
	}
	t.Run("Atomic", func(t *testing.T) {
		t.Parallel()
		p, env := newPool(t, nil)
		sc := env.Schema()
		if _, err := env.Admin().Exec("CREATE TABLE " + sc + ".t (n int); " +
			"CREATE FUNCTION " + sc + ".slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.3); RETURN NULL; END $$; " +
			"CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON " + sc + ".t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " + sc + ".slow()"); err != nil {
			t.Fatal(err)
		}
		srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{ServerTiming: true})(middleware.Atomic(
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx := r.Context()
				dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)")
				fmt.Fprint(w, "ok")
			}))))
		code, _, hdr := get(t, srv.URL)
		if ms, n := durOf(hdr.Get("Server-Timing")); code != http.StatusOK || ms < 300 || n != "2 queries" {
			t.Errorf("%d, Server-Timing %q: want at least the COMMIT's 300ms, 2 queries (the INSERT, the COMMIT)", code, hdr.Get("Server-Timing"))
		}
	})
	t.Run("Eager", func(t *testing.T) {
		t.Parallel()
		p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: time.Minute})
		held, release := make(chan struct{}), make(chan struct{})
		go p.Do(context.Background(), func(context.Context, *dbctx.Scope) error {
			close(held)
			<-release
			return nil
		})
		<-held
		go func() {
			dbtest.Wait(time.Minute, func() bool { return p.Stats().Waiting == 1 })
			time.Sleep(300 * time.Millisecond) // a wait of known length, not an assertion
			close(release)
		}()
		srv := serve(t, middleware.DBWithOpts(p, &middleware.DBOptions{ServerTiming: true, Eager: true})(
			http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				ctx := r.Context()
				dbctx.From(ctx).ExecContext(ctx, "SELECT 1")
				fmt.Fprint(w, "ok")
			})))
		code, _, hdr := get(t, srv.URL)
		if ms, _ := durOf(hdr.Get("Server-Timing")); code != http.StatusOK || ms < 300 {
			t.Errorf("%d, Server-Timing %q: want at least the 300ms waited for the slot", code, hdr.Get("Server-Timing"))
		}
	})
}
