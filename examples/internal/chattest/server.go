// Package chattest exercises a running chat example server (examples/chi,
// examples/nethttp) from outside, as its clients do: HTTP requests,
// websocket clients and a headless browser. Each example's tests start
// their server with Start and call these checks.
package chattest

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// RunFunc runs an example server on ln against dsn until ctx is canceled,
// then shuts it down and returns: the example's run function. listenDSN
// is for the rooms' listener: straight to PostgreSQL where dsn goes
// through a pooler.
type RunFunc func(ctx context.Context, ln net.Listener, dsn, listenDSN string, log *slog.Logger) error

// Behind the CI's PgBouncer the example servers are told so, as their
// users would tell them (see chatserver.Config.TransactionPooling).
func init() {
	if pgtest.Pooled() {
		os.Setenv("TRANSACTION_POOLING", "1")
	}
}

// Server is an example server started by Start.
type Server struct {
	URL    string // http://127.0.0.1:port
	Client *http.Client
	Logs   *dbtest.Logs // what the server logged (also written to the test's output)

	env    *pgtest.Env
	cancel context.CancelFunc
	done   chan error
	err    error
	closed bool
}

// Start runs an example server on a random port against a fresh schema,
// waits until it answers, and stops it at cleanup.
//
// The server connects as a role that is not a superuser (the role of the
// test's schema, made NOSUPERUSER), as a service should: the messages
// table's row-level-security policy binds it.
func Start(t *testing.T, run RunFunc) *Server {
	t.Helper()
	env := pgtest.New(t)
	if _, err := env.Admin().Exec(`ALTER ROLE "` + env.Role() + `" NOSUPERUSER`); err != nil {
		t.Fatal(err)
	}
	return start(t, run, env, "/debug/dbstats")
}

// Another runs a second instance of the example beside s, on the same
// schema: the two share the rooms, as instances behind a load balancer
// do.
func (s *Server) Another(t *testing.T, run RunFunc) *Server {
	t.Helper()
	return start(t, run, s.env, "/debug/dbstats")
}

// start runs run against env, waiting until the server answers GET on
// ready with 200.
func start(t *testing.T, run RunFunc, env *pgtest.Env, ready string) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	logs, rec := dbtest.NewLogs()
	s := &Server{
		URL:    "http://" + ln.Addr().String(),
		Client: &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second},
		Logs:   logs,
		env:    env,
		cancel: cancel,
		done:   make(chan error, 1),
	}
	log := slog.New(tee{slog.NewTextHandler(t.Output(), nil), rec.Handler()})
	listen := env.DirectDSN(t)
	go func() { s.done <- run(ctx, ln, env.DSN(), listen, log) }()
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	eventually(t, "the server to answer", func() bool {
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("run returned early: %v", err)
		default:
		}
		resp, err := s.Client.Get(s.URL + ready)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return s
}

// Stop cancels the server's context, waits for run to return and returns
// its error. It may be called more than once.
func (s *Server) Stop() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	s.cancel()
	select {
	case s.err = <-s.done:
	case <-time.After(30 * time.Second):
		s.err = errors.New("run did not return 30s after cancel")
	}
	s.Client.CloseIdleConnections()
	return s.err
}

// eventually polls cond until it holds, failing t after 15 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// do sends one request and returns the response with its body read.
func (s *Server) do(t *testing.T, method, path, body string) (*http.Response, string) {
	t.Helper()
	return s.doAs(t, "", method, path, body)
}

// doAs is do as tenant's (X-Tenant), or the default tenant's for "".
func (s *Server) doAs(t *testing.T, tenant, method, path, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tenant != "" {
		req.Header.Set("X-Tenant", tenant)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, string(data)
}

// tee is a slog.Handler that hands every record to both of its handlers.
type tee [2]slog.Handler

func (h tee) Enabled(ctx context.Context, l slog.Level) bool {
	return h[0].Enabled(ctx, l) || h[1].Enabled(ctx, l)
}

func (h tee) Handle(ctx context.Context, r slog.Record) error {
	for _, x := range h {
		if x.Enabled(ctx, r.Level) {
			x.Handle(ctx, r.Clone())
		}
	}
	return nil
}

func (h tee) WithAttrs(as []slog.Attr) slog.Handler {
	return tee{h[0].WithAttrs(as), h[1].WithAttrs(as)}
}

func (h tee) WithGroup(name string) slog.Handler {
	return tee{h[0].WithGroup(name), h[1].WithGroup(name)}
}
