package chattest

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// AdminRunFunc runs an example server as in production: on ln the
// application, without Server-Timing; on admin, apart, /metrics and
// /debug/dbstats.
type AdminRunFunc func(ctx context.Context, ln, admin net.Listener, dsn, listenDSN string, log *slog.Logger) error

// AdminApart checks a server run by run: the public listener serves the
// application, sends no Server-Timing, and answers 404 for /metrics and
// /debug/dbstats, which the admin listener serves.
func AdminApart(t *testing.T, run AdminRunFunc) {
	admin, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := start(t, func(ctx context.Context, ln net.Listener, dsn, listenDSN string, log *slog.Logger) error {
		return run(ctx, ln, admin, dsn, listenDSN, log)
	}, pgtest.New(t), "/readyz")
	data := `{"room":"admin","body":"hello"}`
	resp, body := s.do(t, "POST", "/api/messages", data)
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("Server-Timing") != "" {
		t.Fatalf("POST /api/messages: %s %q, Server-Timing %q; want 201 without it", resp.Status, body, resp.Header.Get("Server-Timing"))
	}
	for _, path := range []string{"/metrics", "/debug/dbstats"} {
		if resp, _ := s.do(t, "GET", path, ""); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s on the public listener: %s, want 404", path, resp.Status)
		}
	}
	a := &Server{URL: "http://" + admin.Addr().String(), Client: s.Client}
	if st := a.Stats(t); st.Acquired == 0 {
		t.Errorf("GET /debug/dbstats on the admin listener: %+v", st)
	}
	if resp, body := a.do(t, "GET", "/metrics", ""); resp.StatusCode != http.StatusOK || !strings.Contains(body, "dbscope_acquired_total") {
		t.Errorf("GET /metrics on the admin listener: %s %.200q", resp.Status, body)
	}
	if resp, _ := a.do(t, "GET", "/api/messages?room="+chat.DefaultRoom, ""); resp.StatusCode != http.StatusNotFound {
		t.Errorf("the application on the admin listener: %s, want 404", resp.Status)
	}
}
