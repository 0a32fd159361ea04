package middleware_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/middleware"
)

// bouncerSyncRep starts a cluster whose commits wait for a standby that
// never comes, and a PgBouncer (transaction pooling) of its own before it;
// it returns a superuser's *sql.DB on the cluster and a pool of role app
// through PgBouncer. Skips where either cannot start.
func bouncerSyncRep(t *testing.T) (*sql.DB, *dbctx.Pool) {
	if _, err := exec.LookPath("pgbouncer"); err != nil {
		t.Skip("no pgbouncer")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgserver.StartCluster(ctx, t.Logf, "")
	if err != nil {
		t.Skipf("no throwaway cluster: %v", err)
	}
	t.Cleanup(srv.Stop)
	u, _ := url.Parse(srv.URL)
	host, port := u.Query().Get("host"), u.Query().Get("port")
	dir, _ := os.MkdirTemp("", "zzb")
	os.Chmod(dir, 0o777)
	os.Chmod(host, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bport := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ini := fmt.Sprintf(`[databases]
* = host=%s port=%s
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
auth_type = trust
auth_file = %s/users.txt
pool_mode = transaction
unix_socket_dir =
logfile = %s/bouncer.log
pidfile = %s/bouncer.pid
ignore_startup_parameters = extra_float_digits,application_name
`, host, port, bport, dir, dir, dir)
	os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"postgres" ""`+"\n"+`"app" ""`+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "b.ini"), []byte(ini), 0o644)
	cmd := exec.Command("pgbouncer", "-u", "nobody", filepath.Join(dir, "b.ini"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	eventually(t, "PgBouncer to listen", func() bool {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", bport))
		if c != nil {
			c.Close()
		}
		return err == nil
	})
	admin := openBouncerTest(t, srv.URL)
	mustBouncerTest(t, admin, "CREATE TABLE t (n int)")
	mustBouncerTest(t, admin, "ALTER ROLE postgres SET synchronous_commit = local")
	admin.SetMaxIdleConns(0)
	admin = openBouncerTest(t, srv.URL)
	mustBouncerTest(t, admin, "ALTER SYSTEM SET synchronous_commit = on")
	mustBouncerTest(t, admin, "ALTER SYSTEM SET synchronous_standby_names = 'nosuch'")
	mustBouncerTest(t, admin, "SELECT pg_reload_conf()")
	mustBouncerTest(t, admin, "CREATE ROLE app LOGIN")
	mustBouncerTest(t, admin, "GRANT ALL ON t TO app")
	bdsn := fmt.Sprintf("postgres://app@127.0.0.1:%d/postgres?sslmode=disable&default_query_exec_mode=exec", bport)
	p := dbctx.New(openBouncerTest(t, bdsn), &dbctx.Options{Logger: discardLogger(), TransactionPooling: true})
	t.Cleanup(func() { p.Close() })
	return admin, p
}

// endSyncRepWait terminates the backend of role app whose commit waits for
// the standby, then, once that backend has ended, lets later commits go.
// (Lifted before the backend has seen its termination, the wait ends as a
// standby's answer would end it: the COMMIT is answered, then the
// connection closed. A loaded machine did so.)
func endSyncRepWait(t *testing.T, admin *sql.DB) {
	var pid int
	eventually(t, "the COMMIT waiting for the standby, its backend terminated", func() bool {
		return admin.QueryRow(`SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE usename = 'app' AND wait_event = 'SyncRep' LIMIT 1`).Scan(&pid, new(bool)) == nil
	})
	eventually(t, "the terminated backend's end", func() bool {
		var n int
		return admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&n) == nil && n == 0
	})
	mustBouncerTest(t, admin, "ALTER SYSTEM SET synchronous_standby_names = ''")
	mustBouncerTest(t, admin, "SELECT pg_reload_conf()")
}

// Behind PgBouncer, a COMMIT whose backend is terminated while it waits
// for a synchronous standby (committed locally) is answered by PgBouncer
// with "server conn crashed?" (08P01), not by the server: its outcome is
// unknown (dbctx.ErrCommitUnknown), not "not committed". It was reported
// as a failed commit: the work did not happen, while PostgreSQL held the
// row. PgBouncer of the test's own, before a cluster of the test's own.
func TestAtomicCommitUnknownBehindPgBouncer(t *testing.T) {
	admin, p := bouncerSyncRep(t)
	logs, logger := dbtest.NewLogs()
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: logger})
	h := middleware.DB(p)(atomic(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := r.Context()
		if _, err := dbctx.From(ctx).ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})))
	s := serve(t, h)
	type res struct {
		code int
		hdr  http.Header
		body string
	}
	done := make(chan res, 1)
	go func() {
		c, b, hd := get(t, s.URL)
		done <- res{c, hd, b}
	}()
	endSyncRepWait(t, admin)
	r := <-done
	var n int
	admin.QueryRow("SELECT count(*) FROM t").Scan(&n)
	t.Logf("got %d %q Retry-After=%q; rows %d; logs: %s", r.code, r.body, r.hdr.Get("Retry-After"), n, logs.String())
	if n != 1 {
		t.Skipf("the COMMIT did not commit (%d rows)", n)
	}
	if r.code != http.StatusInternalServerError || r.hdr.Get("Retry-After") != "" ||
		logs.Count(slog.LevelError, "middleware: Atomic request's commit outcome unknown") != 1 {
		t.Errorf("a committed row answered %d (Retry-After %q), logged: %s; want 500, its outcome unknown", r.code, r.hdr.Get("Retry-After"), logs.String())
	}
}

// So for a statement outside a transaction, which commits as it ends.
func TestStatementCommitUnknownBehindPgBouncer(t *testing.T) {
	admin, p := bouncerSyncRep(t)
	done := make(chan error, 1)
	go func() {
		done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
	}()
	endSyncRepWait(t, admin)
	err := <-done
	var n int
	if qerr := admin.QueryRow("SELECT count(*) FROM t").Scan(&n); qerr != nil {
		t.Fatal(qerr)
	}
	if n != 1 {
		t.Skipf("the INSERT did not commit (%d rows): %v", n, err)
	}
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Errorf("an INSERT committed as its backend ended: %v; want ErrCommitUnknown", err)
	}
}

func openBouncerTest(t *testing.T, dsn string) *sql.DB {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func mustBouncerTest(t *testing.T, db *sql.DB, q string) {
	t.Helper()
	if _, err := db.Exec(q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}
