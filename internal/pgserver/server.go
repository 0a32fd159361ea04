// Package pgserver finds a PostgreSQL server for the tests and the examples:
// $DATABASE_URL, else the local server at 127.0.0.1:5432, else a throwaway
// cluster started with initdb/pg_ctl and removed afterwards. It has no
// dependency on package testing, so example binaries can use it.
package pgserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
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
var ErrNoServer = errors.New("pgserver: no PostgreSQL server available")

// Start resolves a PostgreSQL server to use and returns its
// connection URL (a postgres:// URL, or whatever $DATABASE_URL holds). It tries,
// in order, $DATABASE_URL, then [LocalURL] (2 s to connect), then starts a
// throwaway cluster in a temporary directory, listening on a unix socket
// there only. stop stops and removes that cluster; it is a no-op when no
// cluster was started, and safe to call more than once. logf, if not nil,
// is told what was chosen and why.
//
// Every call resolves (and possibly starts a cluster) anew; package
// pgtest shares one per test process.
func Start(ctx context.Context, logf func(format string, args ...any)) (url string, stop func(), err error) {
	url, stop, _, err = start(ctx, logf)
	return url, stop, err
}

func start(ctx context.Context, logf func(format string, args ...any)) (url string, stop func(), throwaway bool, err error) {
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
				return "", nil, false, fmt.Errorf("pgserver: DATABASE_URL is set but unusable: %w", err)
			}
			logf("using the server in DATABASE_URL")
			return u, noop, false, nil
		}
		localErr = ping(ctx, LocalURL, 2*time.Second)
		if localErr == nil {
			logf("using the local server at %s", LocalURL)
			return LocalURL, noop, false, nil
		}
		logf("no usable server at 127.0.0.1:5432 (%v)", localErr)
	}
	c, err := startCluster(ctx, logf)
	if errors.Is(err, errNoBinaries) {
		why := "DBSCOPE_PGTEST_FORCE_CLUSTER is set"
		if localErr != nil {
			why = fmt.Sprintf("DATABASE_URL is not set, the local server did not accept user postgres (%v)", localErr)
		}
		return "", nil, false, fmt.Errorf("%w: %s, and initdb/pg_ctl were not found on PATH or under %s.\n"+
			"To get one, install PostgreSQL (Debian/Ubuntu: apt-get install postgresql; a running server on 127.0.0.1:5432 "+
			"with trust auth for user postgres, or just the binaries, will do), or set DATABASE_URL to a server "+
			"where the user may create schemas", ErrNoServer, why, binGlob)
	}
	if err != nil {
		return "", nil, false, err
	}
	return c.url, c.stop, true, nil
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
	// pgx, not pgconn: pgconn would send pgx's own settings in the DSN
	// (default_query_exec_mode, statement_cache_capacity…) to the server
	// as run-time parameters, which it refuses.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// Server is a resolved PostgreSQL server.
type Server struct {
	URL       string // connection URL (or DSN, as $DATABASE_URL holds it)
	Throwaway bool   // a cluster started for this process, removed by Stop
	stop      func()
}

// Stop stops and removes a throwaway cluster; otherwise it does nothing.
// It is safe to call more than once.
func (s *Server) Stop() { s.stop() }

// Open is [Start] returning a [Server], which says whether it started a
// throwaway cluster.
func Open(ctx context.Context, logf func(format string, args ...any)) (*Server, error) {
	url, stop, throwaway, err := start(ctx, logf)
	if err != nil {
		return nil, err
	}
	return &Server{URL: url, Throwaway: throwaway, stop: stop}, nil
}

// StartCluster starts a throwaway cluster whatever $DATABASE_URL and the
// local server say, for a test that changes the cluster itself (roles,
// ALTER SYSTEM, databases), and returns its URL. stop stops and removes
// it; it is safe to call more than once.
func StartCluster(ctx context.Context, logf func(format string, args ...any)) (url string, stop func(), err error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c, err := startCluster(ctx, logf)
	if err != nil {
		return "", nil, err
	}
	return c.url, c.stop, nil
}
