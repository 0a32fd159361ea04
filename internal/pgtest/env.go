package pgtest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/jackc/pgx/v5/pgconn"
)

// Env is one test's isolated schema on the shared base server, the role
// the test's connections log in as, and the application_name they carry.
type Env struct {
	srv     *server
	schema  string
	appName string
	dsn     string
}

// New creates a fresh schema named t_<sanitized test name>_<random> on the
// shared base server, owned by a login role of the same name whose
// search_path is that schema, and returns an Env for it. Nothing of it
// rides on startup parameters but application_name, so it works through
// a pooler such as PgBouncer as well as directly. At cleanup it
// terminates any backend still connected as that role and drops the
// schema with CASCADE, and the role. It fails tb if there is no server.
func New(tb testing.TB) *Env {
	tb.Helper()
	srv := base(tb)
	adm := admin(tb)
	name := "t_" + sanitize(tb.Name(), 40) + "_" + randomHex(4)
	password := randomHex(16)
	dsn, err := pgserver.WithUser(srv.url, name, password)
	if err == nil {
		dsn, err = pgserver.WithParams(dsn, "application_name", name)
	}
	if err != nil {
		tb.Fatal(err)
	}
	e := &Env{srv: srv, schema: name, appName: name, dsn: dsn}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	role := quoteIdent(name)
	for _, q := range []string{
		// A superuser, as the base server's user is: tests set session
		// authorization, load libraries, terminate backends.
		"CREATE ROLE " + role + " LOGIN SUPERUSER PASSWORD '" + password + "'",
		"CREATE SCHEMA " + role + " AUTHORIZATION " + role,
		"ALTER ROLE " + role + " SET search_path = " + role,
	} {
		if _, err := adm.ExecContext(ctx, q); err != nil {
			tb.Fatalf("pgtest: create schema and role %s: %v", name, err)
		}
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// A backend left behind (say, idle in a transaction) could hold
		// locks that make DROP SCHEMA wait; it is this test's anyway.
		if _, err := e.terminate(ctx); err != nil {
			tb.Errorf("pgtest: cleanup: %v", err)
		}
		for _, q := range []string{
			"DROP SCHEMA IF EXISTS " + role + " CASCADE",
			"DROP OWNED BY " + role, // what it was granted elsewhere
			"DROP ROLE IF EXISTS " + role,
		} {
			if _, err := adm.ExecContext(ctx, q); err != nil {
				tb.Errorf("pgtest: cleanup: %s: %v", q, err)
			}
		}
	})
	return e
}

// DSN returns a pgx connection string (URL or keyword/value, as the base
// server's) whose connections log in as [Env.Role], whose search_path is
// [Env.Schema], and carry application_name=[Env.AppName].
func (e *Env) DSN() string { return e.dsn }

// Role returns the role that [Env.DSN] connections log in as: by it
// [Env.Terminate], [Env.Backends] and [Env.IdleInTransaction] find the
// test's backends, which a pooler does not rename.
func (e *Env) Role() string { return e.schema }

// AppName returns the application_name that [Env.DSN] connections carry,
// unique to this Env.
func (e *Env) AppName() string { return e.appName }

// Schema returns the name of this Env's schema. It needs no quoting.
func (e *Env) Schema() string { return e.schema }

// DSNVia returns [Env.DSN] changed to connect to the TCP address addr
// ("host:port") instead, such as a [Proxy] that forwards to the base
// server, whether that server listens on TCP or on a unix socket.
func (e *Env) DSNVia(addr string) string {
	dsn, err := pgserver.WithTCPAddr(e.dsn, addr)
	if err != nil {
		panic(err) // only for a malformed addr: a bug in the caller
	}
	return dsn
}

// DirectDSN returns [Env.DSN] to PostgreSQL itself, where $DATABASE_URL
// goes through a pooler (see [AdminURLEnv]): for what must not go through
// one, such as a LISTEN.
func (e *Env) DirectDSN(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv(AdminURLEnv)
	if u == "" {
		return e.dsn
	}
	cfg, err := pgconn.ParseConfig(u)
	if err != nil {
		tb.Fatal(err)
	}
	if filepath.IsAbs(cfg.Host) {
		tb.Fatalf("pgtest: %s on a unix socket: not supported", AdminURLEnv)
	}
	return e.DSNVia(net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))))
}

// Open opens a database/sql pool on [Env.DSN] with the pgx driver and closes
// it when tb's test ends. It does not connect until first used.
func (e *Env) Open(tb testing.TB) *sql.DB {
	tb.Helper()
	db, err := sql.Open("pgx", e.dsn)
	if err != nil {
		tb.Fatalf("pgtest: open: %v", err)
	}
	tb.Cleanup(func() { db.Close() })
	return db
}

// Admin returns the process-wide admin pool, straight to PostgreSQL (see
// [AdminURLEnv]) as the base server's user, for inspecting and disturbing
// the test's connections. Do not close it.
func (e *Env) Admin() *sql.DB { return shared.admin }

// Terminate terminates (pg_terminate_backend) every backend logged in as
// [Env.Role], waits until they are gone from pg_stat_activity, and
// returns how many it terminated.
func (e *Env) Terminate(tb testing.TB) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := e.terminate(ctx)
	if err != nil {
		tb.Fatalf("pgtest: terminate: %v", err)
	}
	return n
}

// TerminateContext is [Env.Terminate] that returns its error rather than
// failing a test: for goroutines other than the test's, where t.Fatal
// must not be called.
func (e *Env) TerminateContext(ctx context.Context) (int, error) { return e.terminate(ctx) }

func (e *Env) terminate(ctx context.Context) (int, error) {
	adm := shared.admin
	pids, err := e.backends(ctx, "")
	if err != nil || len(pids) == 0 {
		return 0, err
	}
	rows, err := adm.QueryContext(ctx,
		`SELECT pid FROM unnest($1::int[]) AS pid WHERE pg_terminate_backend(pid)`, pids)
	if err != nil {
		return 0, err
	}
	var killed []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			rows.Close()
			return 0, err
		}
		killed = append(killed, pid)
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	// pg_terminate_backend only signals; wait for the backends to exit.
	err = poll(ctx, func() (bool, error) {
		var left int
		err := adm.QueryRowContext(ctx,
			`SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])`, killed).Scan(&left)
		return left == 0, err
	})
	return len(killed), err
}

// Backends returns the process ids of the server backends logged in as
// [Env.Role].
func (e *Env) Backends(tb testing.TB) []int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pids, err := e.backends(ctx, "")
	if err != nil {
		tb.Fatalf("pgtest: backends: %v", err)
	}
	return pids
}

// IdleInTransaction returns how many of [Env.Backends] are idle inside a
// transaction, aborted or not.
func (e *Env) IdleInTransaction(tb testing.TB) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pids, err := e.backends(ctx,
		`AND state IN ('idle in transaction', 'idle in transaction (aborted)')`)
	if err != nil {
		tb.Fatalf("pgtest: idle in transaction: %v", err)
	}
	return len(pids)
}

// backends lists the pids of this Env's backends that match the extra
// condition cond (SQL starting with AND, or "").
func (e *Env) backends(ctx context.Context, cond string) ([]int, error) {
	rows, err := shared.admin.QueryContext(ctx,
		`SELECT pid FROM pg_stat_activity
		 WHERE usename = $1 AND pid <> pg_backend_pid() `+cond+`
		 ORDER BY pid`, e.schema)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var pids []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			return nil, err
		}
		pids = append(pids, pid)
	}
	return pids, rows.Err()
}

// poll calls cond until it returns true, fails, or ctx ends.
func poll(ctx context.Context, cond func() (bool, error)) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, err := cond()
		if ok || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// sanitize makes s a lower-case identifier fragment of at most n bytes.
func sanitize(s string, n int) string {
	var b strings.Builder
	under := false
	for _, r := range strings.ToLower(s) {
		ok := r >= 'a' && r <= 'z' || r >= '0' && r <= '9'
		if !ok {
			if !under && b.Len() > 0 {
				b.WriteByte('_')
			}
			under = true
			continue
		}
		under = false
		b.WriteRune(r)
		if b.Len() >= n {
			break
		}
	}
	out := strings.TrimRight(b.String(), "_")
	if out == "" {
		out = "x"
	}
	return out
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// quoteIdent quotes a SQL identifier.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

// Database creates a second database on the base server, owned by
// [Env.Role], and returns [Env.DSN] changed to connect to it (its schema
// is public): for tests of one unit of work on two databases. It is
// dropped when tb's test ends, with whatever is still connected to it.
func (e *Env) Database(tb testing.TB) string {
	tb.Helper()
	name := e.schema + "_db"
	dsn, err := pgserver.WithParams(e.dsn, "dbname", name)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := shared.admin.ExecContext(ctx, "CREATE DATABASE "+quoteIdent(name)+" OWNER "+quoteIdent(e.schema)); err != nil {
		tb.Fatalf("pgtest: create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := shared.admin.ExecContext(ctx, "DROP DATABASE IF EXISTS "+quoteIdent(name)+" WITH (FORCE)"); err != nil {
			tb.Errorf("pgtest: cleanup: drop database %s: %v", name, err)
		}
	})
	return dsn
}
