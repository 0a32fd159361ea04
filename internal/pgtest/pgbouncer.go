package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/jackc/pgx/v5"
)

// PoolerEnv names the environment variable that says $DATABASE_URL goes
// through a pooler in transaction mode ("transaction"), as CI runs the
// suites through PgBouncer: tests that need what only a direct
// connection has call [SkipPooled].
const PoolerEnv = "DBSCOPE_PGTEST_POOLER"

// Pooled reports whether the tests run through a pooler in transaction
// mode (see [PoolerEnv]).
func Pooled() bool { return os.Getenv(PoolerEnv) == "transaction" }

// SkipPooled skips tb, saying why, where the tests run through a pooler in
// transaction mode: for what only a direct connection shows (backend
// pids, a session kept from one transaction to the next, kills of
// server backends).
func SkipPooled(tb testing.TB, why string) {
	tb.Helper()
	if Pooled() {
		tb.Skipf("needs a direct connection to PostgreSQL (%s=transaction): %s", PoolerEnv, why)
	}
}

// PgBouncer is a PgBouncer of a test's own, in transaction pooling mode on
// a free loopback port, in front of the base server: so the test can
// stop and restart it.
type PgBouncer struct {
	tb   testing.TB
	bin  string
	dir  string
	addr string
	cmd  *exec.Cmd
	cred *syscall.Credential // to run as, when the test runs as root
}

// PgBouncerOptions configures [StartPgBouncer].
type PgBouncerOptions struct {
	// PoolSize is default_pool_size: the server connections per database
	// and user. Default: 4.
	PoolSize int
	// QueryWaitTimeout is query_wait_timeout: how long a client's
	// statement waits for a server connection before PgBouncer refuses
	// it. Default: PgBouncer's (120 s).
	QueryWaitTimeout time.Duration
	// AuthType is auth_type: how PgBouncer checks a client's password
	// (the role's secret read by auth_query). Default: trust.
	AuthType string
}

// StartPgBouncer starts a PgBouncer (from PATH or /usr/sbin) in front of
// the base server, pool_mode = transaction, and stops it when tb ends. It
// skips tb where PgBouncer is not installed, but fails it when $CI is
// set: CI installs it (.ci/run).
func StartPgBouncer(tb testing.TB, opts *PgBouncerOptions) *PgBouncer {
	tb.Helper()
	bin, err := exec.LookPath("pgbouncer")
	if err != nil {
		bin = "/usr/sbin/pgbouncer"
		if _, err := os.Stat(bin); err != nil {
			if os.Getenv("CI") != "" {
				tb.Fatal("pgtest: pgbouncer is not installed (.ci/run installs it: apt-get install pgbouncer)")
			}
			tb.Skip("pgtest: pgbouncer is not installed (apt-get install pgbouncer)")
		}
	}
	var o PgBouncerOptions
	if opts != nil {
		o = *opts
	}
	if o.PoolSize == 0 {
		o.PoolSize = 4
	}
	direct := adminURL(tb)
	cfg, err := pgx.ParseConfig(direct)
	if err != nil {
		tb.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pgtest-pgbouncer-")
	if err != nil {
		tb.Fatal(err)
	}
	b := &PgBouncer{tb: tb, bin: bin, dir: dir}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	if os.Geteuid() == 0 {
		// PgBouncer refuses to run as root.
		u, err := user.Lookup("postgres")
		if err != nil {
			tb.Fatalf("pgtest: pgbouncer cannot run as root, and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		b.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(dir, uid, gid); err != nil {
			tb.Fatal(err)
		}
	}
	if o.AuthType == "" {
		o.AuthType = "trust"
	}
	extra := ""
	if o.QueryWaitTimeout > 0 {
		extra = fmt.Sprintf("query_wait_timeout = %d\n", max(1, int(o.QueryWaitTimeout/time.Second)))
	}
	b.addr = freeAddr(tb)
	host, port, _ := net.SplitHostPort(b.addr)
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = %s
listen_port = %s
unix_socket_dir =
auth_type = %s
auth_file = %s
auth_user = %s
auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename = $1
pool_mode = transaction
default_pool_size = %d
max_client_conn = 2000
server_login_retry = 1
logfile = %s
pidfile = %s
%s`, cfg.Host, cfg.Port, host, port, o.AuthType, filepath.Join(dir, "users.txt"), cfg.User, o.PoolSize,
		filepath.Join(dir, "pgbouncer.log"), filepath.Join(dir, "pgbouncer.pid"), extra)
	files := map[string]string{
		"pgbouncer.ini": ini,
		"users.txt":     fmt.Sprintf("%q %q\n", cfg.User, cfg.Password),
	}
	for name, body := range files {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			tb.Fatal(err)
		}
		if b.cred != nil {
			os.Chown(path, int(b.cred.Uid), int(b.cred.Gid))
		}
	}
	b.Start()
	tb.Cleanup(b.Stop)
	return b
}

// adminURL is the URL of PostgreSQL itself (see AdminURLEnv).
func adminURL(tb testing.TB) string {
	if u := os.Getenv(AdminURLEnv); u != "" {
		return u
	}
	return base(tb).url
}

// freeAddr returns a loopback address no one listens on now.
func freeAddr(tb testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// Addr returns the address PgBouncer listens on.
func (b *PgBouncer) Addr() string { return b.addr }

// DSN returns env's DSN through this PgBouncer, with the pgx settings
// kv (say "default_query_exec_mode", "exec") added.
func (b *PgBouncer) DSN(env *Env, kv ...string) string {
	// PgBouncer here offers no TLS, whatever the Env's connection string
	// asks of PostgreSQL.
	dsn, err := pgserver.WithParams(env.DSNVia(b.addr), append([]string{"sslmode", "disable"}, kv...)...)
	if err != nil {
		b.tb.Fatal(err)
	}
	return dsn
}

// Start starts PgBouncer (again, after Stop) and waits until it takes
// connections.
func (b *PgBouncer) Start() {
	b.tb.Helper()
	cmd := exec.Command(b.bin, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: b.cred}
	if err := cmd.Start(); err != nil {
		b.tb.Fatalf("pgtest: start pgbouncer: %v", err)
	}
	b.cmd = cmd
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		c, err := net.DialTimeout("tcp", b.addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-ctx.Done():
			b.tb.Fatalf("pgtest: pgbouncer does not listen on %s: %v\n%s", b.addr, err, b.log())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Stop stops PgBouncer at once (SIGTERM: immediate shutdown, clients
// disconnected) and waits until it has exited. It is a no-op when it is
// stopped.
func (b *PgBouncer) Stop() {
	if b.cmd == nil {
		return
	}
	b.cmd.Process.Signal(syscall.SIGTERM)
	err := b.cmd.Wait()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		b.tb.Errorf("pgtest: stop pgbouncer: %v", err)
	}
	b.cmd = nil
}

func (b *PgBouncer) log() string {
	data, _ := os.ReadFile(filepath.Join(b.dir, "pgbouncer.log"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	return strings.Join(lines, "\n")
}
