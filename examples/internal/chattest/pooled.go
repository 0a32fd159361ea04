package chattest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// PgBouncer runs the example behind a PgBouncer of the test's own in
// transaction mode, as the README starts it: run declares
// TransactionPooling, and the connection string names no pgx exec mode.
// Clients of several tenants post and list at once, over more server
// connections than one: every request succeeds, and PostgreSQL stores
// each message under the tenant that posted it.
func PgBouncer(t *testing.T, run RunFunc) {
	env := pgtest.New(t)
	if _, err := env.Admin().Exec(`ALTER ROLE "` + env.Role() + `" NOSUPERUSER`); err != nil {
		t.Fatal(err)
	}
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 4})
	dsn := withoutParam(t, b.DSN(env), "default_query_exec_mode") // as a user writes it
	s := start(t, func(ctx context.Context, ln net.Listener, _, listenDSN string, log *slog.Logger) error {
		return run(ctx, ln, dsn, listenDSN, log)
	}, env, "/debug/dbstats")

	const clients, posts = 12, 10
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			for i := range posts {
				tenant := fmt.Sprintf("t%d", (c+i)%4)
				data, _ := json.Marshal(chat.Post{Room: "pooled", Body: tenant})
				if status, body := s.request(tenant, "POST", "/api/messages", string(data)); status != http.StatusCreated {
					t.Errorf("client %d: POST as %s: %d %q", c, tenant, status, body)
					return
				}
				status, body := s.request(tenant, "GET", "/api/messages?room=pooled", "")
				var msgs []chat.Message
				if err := json.Unmarshal([]byte(body), &msgs); status != http.StatusOK || err != nil {
					t.Errorf("client %d: GET as %s: %d %q", c, tenant, status, body)
					return
				}
				for _, m := range msgs {
					if m.Tenant != tenant || m.Body != tenant {
						t.Errorf("client %d: %s lists %+v", c, tenant, m)
					}
				}
			}
		})
	}
	wg.Wait()
	// PostgreSQL's word: each row under the tenant that posted it.
	var rows, wrong int
	if err := env.Admin().QueryRow(`SELECT count(*), count(*) FILTER (WHERE tenant <> body) FROM "`+env.Schema()+`".messages`).
		Scan(&rows, &wrong); err != nil {
		t.Fatal(err)
	}
	if rows != clients*posts || wrong != 0 {
		t.Errorf("%d rows stored (want %d), %d under another tenant", rows, clients*posts, wrong)
	}
	if errs := s.Logs.AtLeast(slog.LevelError); len(errs) != 0 {
		t.Errorf("logged at ERROR: %v", errs)
	}
}

// request sends one request as tenant's and returns its status and body;
// unlike doAs it may run on any goroutine.
func (s *Server) request(tenant, method, path, body string) (int, string) {
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("X-Tenant", tenant)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err.Error()
	}
	return resp.StatusCode, string(data)
}

// withoutParam returns dsn without the parameter key.
func withoutParam(t *testing.T, dsn, key string) string {
	if !strings.Contains(dsn, key) {
		return dsn
	}
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("not a connection URL: %q (%v)", dsn, err)
	}
	q := u.Query()
	q.Del(key)
	u.RawQuery = q.Encode()
	return u.String()
}
