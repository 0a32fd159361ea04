package wsconsumer_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

func selectOne(ctx context.Context) error {
	return dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var n int
		return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
	})
}

// faultyPools returns pools that cannot connect, by what they meet: a
// database that does not exist (a misconfiguration), a port where
// nothing listens (an outage), and a pool closed (shutting down); the
// logger of each records what it is told.
func faultyPools(t *testing.T) map[string]struct {
	pool *dbctx.Pool
	logs *dbtest.Logs
} {
	pgtest.SkipPooled(t, "the faults are injected in the connection string, which names PgBouncer")
	env := pgtest.New(t)
	missing, refused := env.MissingDatabase(t), env.Refused(t)
	out := map[string]struct {
		pool *dbctx.Pool
		logs *dbtest.Logs
	}{}
	for name, dsn := range map[string]string{"misconfigured": missing, "unavailable": refused, "closed": env.DSN()} {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		logs, log := dbtest.NewLogs()
		p := dbctx.New(db, &dbctx.Options{Logger: log})
		t.Cleanup(func() { p.Close() })
		if name == "closed" {
			p.Close()
		}
		out[name] = struct {
			pool *dbctx.Pool
			logs *dbtest.Logs
		}{p, logs}
	}
	return out
}

// A Connect that meets a condition of the pool is answered as
// middleware.Answer answers it: a misconfiguration with 500 and no
// record of the handler's (the pool logs it once), an outage and a
// closed pool with 503 and Retry-After; a Receive that meets one closes
// the socket with 1011, 1013 and 1001. Nothing is logged at ERROR but
// the pool's one record of the misconfiguration.
func TestPoolConditions(t *testing.T) {
	t.Parallel()
	const tries = 5
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			for fault, f := range faultyPools(t) {
				wantHTTP, wantClose := map[string]int{
					"misconfigured": http.StatusInternalServerError,
					"unavailable":   http.StatusServiceUnavailable,
					"closed":        http.StatusServiceUnavailable,
				}[fault], map[string]websocket.StatusCode{
					"misconfigured": websocket.StatusInternalError,
					"unavailable":   websocket.StatusTryAgainLater,
					"closed":        websocket.StatusGoingAway,
				}[fault]
				logs, log := dbtest.NewLogs()
				opts := &wsconsumer.Options{Logger: log}
				connecting := style(f.pool, wsconsumer.Consumer{Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					return selectOne(ctx)
				}}, opts)
				receiving := style(f.pool, wsconsumer.Consumer{
					Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
						return selectOne(ctx)
					},
				}, opts)
				connectURL, receiveURL := serve(t, connecting), serve(t, receiving)
				for range tries {
					_, resp, err := websocket.Dial(context.Background(), connectURL, nil)
					if err == nil || resp == nil || resp.StatusCode != wantHTTP ||
						(wantHTTP == http.StatusServiceUnavailable) != (resp.Header.Get("Retry-After") == "1") {
						t.Fatalf("%s at Connect: %v, %v; want %d", fault, err, resp, wantHTTP)
					}
					c := dial(t, receiveURL)
					send(t, c, msg{ID: 1})
					if _, code := recv(t, c); code != wantClose {
						t.Fatalf("%s at Receive: closed with %v, want %v", fault, code, wantClose)
					}
				}
				if recs := logs.AtLeast(slog.LevelWarn); len(recs) != 0 {
					t.Errorf("%s: the handler logged:\n%s", fault, logs)
				}
				for _, st := range []wsconsumer.Stats{connecting.Stats(), receiving.Stats()} {
					counted := map[string]int64{"misconfigured": st.Failed, "unavailable": st.Busy, "closed": st.Busy}[fault]
					if counted != tries || st.Failed+st.Busy != tries {
						t.Errorf("%s: Stats %+v", fault, st)
					}
				}
				errs := len(f.logs.AtLeast(slog.LevelError))
				if want := map[string]int{"misconfigured": 1}[fault]; errs != want {
					t.Errorf("%s: the pool logged %d ERROR records, want %d:\n%s", fault, errs, want, f.logs)
				}
			}
		})
	}
}

// A client that hangs up mid-reply is no failure of the server's: the
// error of a send, of a query or of a join, on the socket it left closes nothing,
// is logged at Debug only and counted as ClientGone.
func TestClientGoneNotAnError(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		for what, after := range map[string]func(ctx context.Context, s *wsconsumer.Session) error{
			"send":  func(ctx context.Context, s *wsconsumer.Session) error { return s.SendText(ctx, "too late") },
			"query": func(ctx context.Context, s *wsconsumer.Session) error { return selectOne(ctx) },
			// What Join returns once the socket is disconnecting.
			"join": func(ctx context.Context, s *wsconsumer.Session) error {
				return fmt.Errorf("joining the room: %w", wsconsumer.ErrClosed)
			},
		} {
			t.Run(name+"/"+what, func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				logs, log := dbtest.NewLogs()
				h := style(p, wsconsumer.Consumer{
					Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
						<-s.Context().Done() // the client has hung up
						return after(ctx, s)
					},
				}, &wsconsumer.Options{Logger: log})
				c := dial(t, serve(t, h))
				send(t, c, msg{ID: 1})
				c.CloseNow()
				dbtest.Eventually(t, "the socket gone", func() bool { return h.Stats().Sockets == 0 })
				if st := h.Stats(); st.ClientGone != 1 || st.Failed != 0 {
					t.Errorf("Stats %+v, want ClientGone 1, Failed 0", st)
				}
				if recs := logs.AtLeast(slog.LevelInfo); len(recs) != 0 {
					t.Errorf("logged above Debug:\n%s", logs)
				}
			})
		}
	}
}

type requestIDKey struct{}

// LogAttrs puts the caller's attributes, from the upgrade request's
// context, on the records logged about a socket.
func TestLogAttrs(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	logs, log := dbtest.NewLogs()
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(context.Context, *wsconsumer.Session, websocket.MessageType, []byte) error {
			return errors.New("boom")
		},
	}, &wsconsumer.Options{Logger: log, LogAttrs: func(ctx context.Context) []slog.Attr {
		id, _ := ctx.Value(requestIDKey{}).(string)
		return []slog.Attr{slog.String("request_id", id)}
	}})
	withID := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, "req-42")))
	})
	srv := httptestServer(withID)
	defer srv.Close()
	defer h.Shutdown(context.Background())
	c := dial(t, "ws"+srv.URL[len("http"):])
	send(t, c, msg{ID: 1})
	if _, code := recv(t, c); code != websocket.StatusInternalError {
		t.Fatalf("closed with %v, want 1011", code)
	}
	recs := logs.AtLeast(slog.LevelError)
	if len(recs) != 1 || recs[0].Attrs["request_id"] != "req-42" || recs[0].Attrs["callback"] != "receive" {
		t.Errorf("want one ERROR record with request_id=req-42:\n%s", logs)
	}
}

// Fail closes the socket from a goroutine of Session.Go as a callback's
// error would: a condition of the pool with its status, no record above
// Debug; an error of its own with 1011 and one ERROR record.
func TestSessionFail(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err    error
		code   websocket.StatusCode
		errors int
	}{
		{fmt.Errorf("history: %w", dbctx.ErrBusy), websocket.StatusTryAgainLater, 0},
		{fmt.Errorf("history: %w", dbctx.ErrPoolClosed), websocket.StatusGoingAway, 0},
		{errors.New("boom"), websocket.StatusInternalError, 1},
	} {
		p, _ := dbtest.NewPool(t, nil)
		logs, log := dbtest.NewLogs()
		h := wsconsumer.NewAsync(p, wsconsumer.Consumer{
			Connect: func(ctx context.Context, s *wsconsumer.Session) error {
				s.Go(func(ctx context.Context) { s.Fail(tc.err) })
				return nil
			},
		}, &wsconsumer.Options{Logger: log})
		c := dial(t, serve(t, h))
		if _, code := recv(t, c); code != tc.code {
			t.Errorf("%v: closed with %v, want %v", tc.err, code, tc.code)
		}
		if n := len(logs.AtLeast(slog.LevelInfo)); n != tc.errors {
			t.Errorf("%v: %d records above Debug, want %d:\n%s", tc.err, n, tc.errors, logs)
		}
	}
}

// A callback that fails because the server closed its socket is not
// counted as a client gone (the client stayed): one canceled by Shutdown
// counts as the server closing (Busy, as a closed pool), one canceled by
// the server's own close (Session.Close from elsewhere, IdleTimeout)
// counts nowhere. Neither is logged above Debug.
func TestServerClosesNotClientGone(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	for name, style := range styles {
		for _, how := range []string{"shutdown", "close", "idle"} {
			t.Run(name+"/"+how, func(t *testing.T) {
				t.Parallel()
				p, env := dbtest.NewPool(t, nil)
				logs, log := dbtest.NewLogs()
				sessions := make(chan *wsconsumer.Session, 1)
				opts := &wsconsumer.Options{Logger: log}
				if how == "idle" {
					opts.IdleTimeout = 300 * time.Millisecond
				}
				h := style(p, wsconsumer.Consumer{
					Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
						sessions <- s
						return dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
							_, err := sc.ExecContext(ctx, "SELECT pg_sleep(60)")
							return err
						})
					},
				}, opts)
				c := dial(t, serve(t, h))
				go func() { // the client stays, and answers the close
					for {
						if _, _, err := c.Read(context.Background()); err != nil {
							return
						}
					}
				}()
				send(t, c, msg{ID: 1})
				s := <-sessions
				dbtest.Eventually(t, "the query", func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") == 1 })
				want := wsconsumer.Stats{Accepted: 1}
				switch how {
				case "shutdown":
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					if err := h.Shutdown(ctx); err != nil {
						t.Fatal(err)
					}
					want.Busy = 1
				case "close":
					s.Close(websocket.StatusPolicyViolation, "kicked")
				}
				dbtest.Eventually(t, "the socket gone", func() bool { return h.Stats().Sockets == 0 })
				if st := h.Stats(); st != want {
					t.Errorf("Stats %+v, want %+v", st, want)
				}
				if recs := logs.AtLeast(slog.LevelInfo); len(recs) != 0 {
					t.Errorf("logged above Debug:\n%s", logs)
				}
			})
		}
	}
}

// A LogAttrs that panics (a nil user, say, for a socket no middleware
// authenticated) where the handler logs on a goroutine of its own (an
// async socket's worker, a group's member, the keepalive goroutine, this
// one under the handler's lock) does not end the process, nor the
// socket's handling: the record is logged without its attributes, and
// says so. The socket is closed as its failure says (1011), and the
// handler goes on serving.
func TestLogAttrsPanics(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	logs, log := dbtest.NewLogs()
	layer := memoryLayer(t)
	var disconnects atomic.Int32
	h := wsconsumer.NewAsync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error { return s.Join(ctx, "g") },
		Receive: func(context.Context, *wsconsumer.Session, websocket.MessageType, []byte) error {
			return errors.New("boom")
		},
		Event: func(context.Context, *wsconsumer.Session, groups.Event) error {
			return errors.New("event boom")
		},
		Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { disconnects.Add(1) },
	}, &wsconsumer.Options{Logger: log, InFlight: 2, Layer: layer, LogAttrs: func(ctx context.Context) []slog.Attr {
		var user *struct{ ID string }
		return []slog.Attr{slog.String("user", user.ID)} // nil: panics
	}})
	url := serve(t, h)
	c := dial(t, url) // a message, on a worker goroutine
	send(t, c, msg{ID: 1})
	if _, code := recv(t, c); code != websocket.StatusInternalError {
		t.Fatalf("closed with %v, want 1011", code)
	}
	dbtest.Eventually(t, "the first disconnected", func() bool { return disconnects.Load() == 1 && h.Len() == 0 })
	c = dial(t, url) // a group's event, on the member's goroutine
	if err := layer.Send(context.Background(), "g", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, code := recv(t, c); code != websocket.StatusInternalError {
		t.Fatalf("closed with %v, want 1011", code)
	}
	dbtest.Eventually(t, "both disconnected", func() bool { return disconnects.Load() == 2 && h.Len() == 0 })
	recs := logs.AtLeast(slog.LevelError)
	if len(recs) != 2 || recs[0].Attrs["callback"] != "receive" || recs[1].Attrs["callback"] != "event" {
		t.Fatalf("want the ERROR records of the two failures:\n%s", logs)
	}
	for _, r := range recs {
		if r.Msg != "wsconsumer: callback failed" || r.Attrs["log_attrs_panic"] == "" {
			t.Errorf("want each with LogAttrs' panic:\n%s", logs)
		}
	}
	c = dial(t, url) // still serving
	c.Close(websocket.StatusNormalClosure, "")
}
