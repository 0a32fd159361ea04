package pgtest

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// adminAppName is the application_name of the shared admin pool.
const adminAppName = "pgtest_admin"

// server is a resolved base server.
type server struct {
	url     string
	network string // "tcp" or "unix": how to reach it without pgx (the proxy)
	addr    string // host:port or socket path
	stop    func()
}

// newServer works out the network address behind url.
func newServer(url string, stop func()) (*server, error) {
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pgtest: parse server URL: %w", err)
	}
	port := strconv.Itoa(int(cfg.Port))
	if filepath.IsAbs(cfg.Host) {
		return &server{url: url, stop: stop, network: "unix", addr: filepath.Join(cfg.Host, ".s.PGSQL."+port)}, nil
	}
	return &server{url: url, stop: stop, network: "tcp", addr: net.JoinHostPort(cfg.Host, port)}, nil
}

// shared is the process-wide base server and admin pool used by the test
// helpers; [Main] releases them.
var shared struct {
	once sync.Once
	srv  *server
	err  error

	adminOnce sync.Once
	admin     *sql.DB
	adminErr  error
}

// stderrLogf logs the base server resolution; go test shows it with -v or
// when the package fails.
func stderrLogf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "pgtest: "+format+"\n", args...)
}

// base returns the shared base server, resolving it on first use, and fails
// tb if there is none.
func base(tb testing.TB) *server {
	tb.Helper()
	srv, err := resolve()
	if err != nil {
		tb.Fatal(err)
	}
	return srv
}

// resolve resolves the shared base server once per process.
func resolve() (*server, error) {
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		url, stop, err := pgserver.Start(ctx, stderrLogf)
		if err != nil {
			shared.err = err
			return
		}
		shared.srv, shared.err = newServer(url, stop)
		if shared.err != nil {
			stop()
		}
	})
	return shared.srv, shared.err
}

// URL returns the connection URL of the base server shared by the tests of
// this process, resolving it with [Start] on first use. It fails tb if there
// is no server.
func URL(tb testing.TB) string {
	tb.Helper()
	return base(tb).url
}

// AdminURLEnv names the environment variable with the URL of the admin
// pool, where $DATABASE_URL goes through a pooler: the admin pool must
// reach PostgreSQL itself, to see and terminate the backends of the
// tests. Unset, the admin pool uses the base server's URL.
const AdminURLEnv = "DBSCOPE_ADMIN_URL"

// admin returns the shared admin pool, opening it on first use.
func admin(tb testing.TB) *sql.DB {
	tb.Helper()
	srv := base(tb)
	shared.adminOnce.Do(func() {
		url := srv.url
		if u := os.Getenv(AdminURLEnv); u != "" {
			url = u
		}
		dsn, err := pgserver.WithParams(url, "application_name", adminAppName)
		if err != nil {
			shared.adminErr = err
			return
		}
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			shared.adminErr = err
			return
		}
		db.SetMaxIdleConns(4)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := db.PingContext(ctx); err != nil {
			db.Close()
			shared.adminErr = fmt.Errorf("pgtest: connect admin pool: %w", err)
			return
		}
		shared.admin = db
	})
	if shared.adminErr != nil {
		tb.Fatal(shared.adminErr)
	}
	return shared.admin
}

// shutdown closes the admin pool and stops a throwaway cluster, if any.
func shutdown() {
	if shared.admin != nil {
		shared.admin.Close()
		shared.admin = nil
	}
	if shared.srv != nil {
		shared.srv.stop()
	}
}
