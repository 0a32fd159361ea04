package middleware_test

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func newPool(t *testing.T, opts *dbctx.Options) (*dbctx.Pool, *pgtest.Env) {
	return dbtest.NewPool(t, opts)
}

// serve starts a real server for h; its error log is kept out of the test
// output (handlers here panic on purpose).
func serve(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url string) (int, string, http.Header) {
	t.Helper()
	return do(t, http.MethodGet, url)
}

func do(t *testing.T, method, url string) (int, string, http.Header) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error(), nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), resp.Header
}

func eventually(t *testing.T, what string, cond func() bool) { dbtest.Eventually(t, what, cond) }

func activeQueries(t *testing.T, env *pgtest.Env, prefix string) int {
	return dbtest.ActiveQueries(t, env, prefix)
}

func countRows(t *testing.T, env *pgtest.Env) int {
	t.Helper()
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func createTable(t *testing.T, env *pgtest.Env) {
	t.Helper()
	if _, err := env.Admin().Exec("CREATE TABLE " + env.Schema() +
		".t (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)"); err != nil {
		t.Fatal(err)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
