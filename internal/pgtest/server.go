package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
)

// ForceClusterEnv names the environment variable that, when set to a value
// other than "" or "0", makes [Start] skip $DATABASE_URL and the local server
// and always start a throwaway cluster. It exists to test that path:
//
//	DBSCOPE_PGTEST_FORCE_CLUSTER=1 go test ./internal/pgtest/
const ForceClusterEnv = "DBSCOPE_PGTEST_FORCE_CLUSTER"

// LocalURL is the local server that [Start] tries when $DATABASE_URL is unset.
const LocalURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// ErrNoServer is wrapped by the error [Start] returns when it can find no
// PostgreSQL at all: no $DATABASE_URL, no local server and no binaries to
// start a cluster with.
var ErrNoServer = errors.New("pgtest: no PostgreSQL server available")

// adminAppName is the application_name of the shared admin pool.
const adminAppName = "pgtest_admin"

// Start resolves a PostgreSQL server to test against and returns its
// connection URL (a postgres:// URL, or whatever $DATABASE_URL holds). It tries,
// in order, $DATABASE_URL, then [LocalURL] (2 s to connect), then starts a
// throwaway cluster in a temporary directory, listening on a unix socket
// there only. stop stops and removes that cluster; it is a no-op when no
// cluster was started, and safe to call more than once. logf, if not nil,
// is told what was chosen and why.
//
// Unlike the test helpers ([New], [URL]), which share one server per
// process, every call resolves (and possibly starts a cluster) anew.
func Start(ctx context.Context, logf func(format string, args ...any)) (url string, stop func(), err error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	noop := func() {}
	var localErr error
	if forceCluster() {
		logf("%s is set: skipping DATABASE_URL and %s", ForceClusterEnv, LocalURL)
	} else {
		if u := os.Getenv("DATABASE_URL"); u != "" {
			if err := ping(ctx, u, 10*time.Second); err != nil {
				return "", nil, fmt.Errorf("pgtest: DATABASE_URL is set but unusable: %w", err)
			}
			logf("using the server in DATABASE_URL")
			return u, noop, nil
		}
		localErr = ping(ctx, LocalURL, 2*time.Second)
		if localErr == nil {
			logf("using the local server at %s", LocalURL)
			return LocalURL, noop, nil
		}
		logf("no usable server at 127.0.0.1:5432 (%v)", localErr)
	}
	c, err := startCluster(ctx, logf)
	if errors.Is(err, errNoBinaries) {
		why := "DBSCOPE_PGTEST_FORCE_CLUSTER is set"
		if localErr != nil {
			why = fmt.Sprintf("DATABASE_URL is not set, the local server did not accept user postgres (%v)", localErr)
		}
		return "", nil, fmt.Errorf("%w: %s, and initdb/pg_ctl were not found on PATH or under %s.\n"+
			"To get one, install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; a running server on 127.0.0.1:5432 "+
			"with trust auth for user postgres, or just the binaries, will do), or set DATABASE_URL to a server "+
			"where the user may create schemas", ErrNoServer, why, binGlob)
	}
	if err != nil {
		return "", nil, err
	}
	return c.url, c.stop, nil
}

// forceCluster reports whether [ForceClusterEnv] is set.
func forceCluster() bool {
	v := os.Getenv(ForceClusterEnv)
	return v != "" && v != "0"
}

// ping connects to dsn and disconnects, giving up after timeout.
func ping(ctx context.Context, dsn string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	conn, err := pgconn.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

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
		url, stop, err := Start(ctx, stderrLogf)
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

// admin returns the shared admin pool, opening it on first use.
func admin(tb testing.TB) *sql.DB {
	tb.Helper()
	srv := base(tb)
	shared.adminOnce.Do(func() {
		dsn, err := withParams(srv.url, "application_name", adminAppName)
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
