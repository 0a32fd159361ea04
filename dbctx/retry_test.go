package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

// A statement that can commit partway (a CALL of a procedure that
// COMMITs, a DO block that does, a string of several statements with a
// COMMIT among them) and whose session is ended after its commit is not
// run again: PostgreSQL, asked, holds its row once.
func TestNoRetryOfWhatCommitsPartway(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"call": "CALL ins_then_sleep()",
		"do": `DO $$BEGIN INSERT INTO log VALUES ('committed'); COMMIT;
			PERFORM pg_sleep(30); END$$`,
		"several": "INSERT INTO log VALUES ('committed'); COMMIT; SELECT pg_sleep(30)",
	}
	for name, stmt := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
			adm := env.Admin()
			mustExec(t, adm, "CREATE TABLE "+env.Schema()+".log (what text)")
			mustExec(t, adm, "CREATE PROCEDURE "+env.Schema()+`.ins_then_sleep() LANGUAGE plpgsql AS $$
				BEGIN INSERT INTO log VALUES ('committed'); COMMIT; PERFORM pg_sleep(30); END $$`)
			done := make(chan error, 1)
			go func() {
				done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, stmt)
					return err
				})
			}()
			eventually(t, "the insert to commit", func() bool {
				var n int
				if err := adm.QueryRow("SELECT count(*) FROM " + env.Schema() + ".log").Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n == 1
			})
			if n := env.Terminate(t); n != 1 {
				t.Fatalf("killed %d backends, want 1", n)
			}
			err := <-done
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "57P01" {
				t.Fatalf("got %v, want the 57P01 of the ended session", err)
			}
			var n int
			if err := adm.QueryRow("SELECT count(*) FROM " + env.Schema() + ".log").Scan(&n); err != nil || n != 1 {
				t.Fatalf("%d rows (%v), want the one committed: the statement ran again", n, err)
			}
			if st := p.Stats(); st.Retries != 0 {
				t.Fatalf("retries = %d, want 0", st.Retries)
			}
		})
	}
}

// Once anything has run on a connection, a statement that finds it dead
// is not run again elsewhere, whatever the earlier statements were: here
// a view sets the tenant, which the classifier cannot see. The statement
// fails with ErrSessionLost, and so does the next of the same unit of
// work, rather than run without the tenant; the next unit starts afresh.
func TestNoRetryAfterUnseenState(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	mustExec(t, env.Admin(), "CREATE VIEW "+env.Schema()+".tenant AS SELECT set_config('app.tenant', '42', false) AS t")
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var v string
		if err := s.QueryRowContext(ctx, "SELECT t FROM tenant").Scan(&v); err != nil {
			return err
		}
		if n := env.Terminate(t); n != 1 {
			t.Fatalf("killed %d backends, want 1", n)
		}
		err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant', true)").Scan(&v)
		var pe *pgconn.PgError
		if !errors.Is(err, dbctx.ErrSessionLost) || !errors.As(err, &pe) || pe.Code != "57P01" {
			t.Errorf("the statement after the kill: %v (tenant %q), want ErrSessionLost around 57P01", err, v)
		}
		err = s.QueryRowContext(ctx, "SELECT current_setting('app.tenant', true)").Scan(&v)
		if !errors.Is(err, dbctx.ErrSessionLost) {
			t.Errorf("the next statement: %v (tenant %q), want ErrSessionLost", err, v)
		}
		if err := dbctx.Atomic(ctx, func(ctx context.Context) error { return nil }); err != nil {
			t.Errorf("an Atomic that runs nothing: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var v sql.NullString
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT current_setting('app.tenant', true)").Scan(&v)
	}); err != nil || v.String != "" {
		t.Fatalf("the next unit of work: tenant %q, %v; want a fresh session", v.String, err)
	}
	if st := p.Stats(); st.Retries != 0 {
		t.Fatalf("retries = %d, want 0", st.Retries)
	}
}

// OnAcquire's statement is the first on a connection pinned without the
// socket check: where it finds the connection dead, OnAcquire runs again
// on another, and the scope's statement never sees the dead one.
func TestOnAcquireFindsDeadConnection(t *testing.T) {
	t.Parallel()
	forDrivers(t, testOnAcquireFindsDeadConnection)
}

func testOnAcquireFindsDeadConnection(t *testing.T, drv string) {
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPoolWith(t, drv, &dbctx.Options{
		MaxWorkers: 1,
		OnAcquire: func(ctx context.Context, c *sql.Conn) error {
			_, err := c.ExecContext(ctx, "SELECT set_config('app.tenant', $1, false)", ctx.Value(tenantKey{}))
			return err
		},
	})
	p.SetRecent(time.Hour) // the dead connection is not looked at
	killJustReleased(t, p, env, true)
	ctx := context.WithValue(context.Background(), tenantKey{}, "7")
	var v string
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&v)
	}); err != nil || v != "7" {
		t.Fatalf("tenant %q, %v; want 7, from OnAcquire run again", v, err)
	}
	if st := p.Stats(); st.Discarded.Dead != 1 || st.Discarded.Hook != 0 {
		t.Fatalf("want one connection found dead by OnAcquire: %+v", st)
	}
}

// A statement retried on a fresh connection has OnAcquire run there
// first: here the backend is killed after OnAcquire, before the scope's
// first statement.
func TestRetryRunsOnAcquireAgain(t *testing.T) {
	t.Parallel()
	forDrivers(t, testRetryRunsOnAcquireAgain)
}

func testRetryRunsOnAcquireAgain(t *testing.T, drv string) {
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	var env *pgtest.Env
	runs := 0
	p, env := newPoolWith(t, drv, &dbctx.Options{
		MaxWorkers: 1,
		OnAcquire: func(ctx context.Context, c *sql.Conn) error {
			runs++
			_, err := c.ExecContext(ctx, "SELECT set_config('app.tenant', $1, false)", ctx.Value(tenantKey{}))
			if runs == 1 && err == nil {
				if n := env.Terminate(t); n != 1 {
					return fmt.Errorf("killed %d backends, want 1", n)
				}
			}
			return err
		},
	})
	ctx := context.WithValue(context.Background(), tenantKey{}, "7")
	var v string
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&v)
	}); err != nil || v != "7" {
		t.Fatalf("tenant %q, %v; want 7, retried after OnAcquire ran again", v, err)
	}
	if st := p.Stats(); st.Retries != 1 || runs != 2 {
		t.Fatalf("retries %d, OnAcquire runs %d; want 1, 2", st.Retries, runs)
	}
}

// A connection that stays pinned across boundaries (ConnMaxAge) and whose
// backend is killed while it is idle between two units of work is
// replaced at the boundary: the next unit's statement, which could not be
// retried on that connection, does not fail.
func TestKilledWhilePinnedIdle(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1, ConnMaxAge: -1})
	killWhilePinnedIdle(t, p, env)
}

// The same over TLS, which hides from the socket check the FATAL that
// comes a few milliseconds before the backend's close.
func TestKilledWhilePinnedIdleTLS(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	env := newEnv(t)
	db := openDSN(t, tlsDSN(t, env))
	killWhilePinnedIdle(t, poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, ConnMaxAge: -1}), env)
}

func killWhilePinnedIdle(t *testing.T, p *dbctx.Pool, env *pgtest.Env) {
	ctx, scope := p.Scope(context.Background())
	defer scope.End()
	for i := range 5 {
		n, err := dbctx.DoValue(ctx, func(ctx context.Context, s *dbctx.Scope) (int, error) {
			return queryInt(ctx, s, "SELECT $1::int", i)
		})
		if err != nil || n != i {
			t.Fatalf("unit %d after an idle kill: %d, %v", i, n, err)
		}
		if st := p.Stats(); st.Pinned != 1 {
			t.Fatalf("unit %d: %d connections pinned, want 1 kept across the boundary", i, st.Pinned)
		}
		if n := env.Terminate(t); n != 1 {
			t.Fatalf("killed %d backends, want 1", n)
		}
	}
	if st := p.Stats(); st.Discarded.Dead < 4 || st.Retries != 0 {
		t.Fatalf("want the dead connections found at the boundary: %+v", st)
	}
}

// A failure of the cleanup after Do's function (here the reset of a dirty
// session whose backend is gone) does not become Do's error: the work
// committed, and PostgreSQL holds it once; the dirty connection reaches
// no one (the reset it owes fails, and it is discarded).
func TestCleanupKeepsTheOutcome(t *testing.T) {
	t.Parallel()
	forDrivers(t, testCleanupKeepsTheOutcome)
}

func testCleanupKeepsTheOutcome(t *testing.T, drv string) {
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.ExecContext(ctx, "SET app.x = 'dirty'"); err != nil {
			return err
		}
		if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			return err
		}
		if n := env.Terminate(t); n != 1 {
			return fmt.Errorf("killed %d backends, want 1", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Do returned %v for work that committed", err)
	}
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d rows, %v; want 1", n, err)
	}
	// The reset is owed by the connection's next user, or paid before it
	// goes back to the *sql.DB: here, in 10 ms, where it fails.
	eventually(t, "the dirty connection discarded", func() bool {
		st := p.Stats()
		return st.Discarded.Reset+st.Discarded.Dead == 1 && st.Kept == 0
	})
	if st := p.Stats(); st.Resets != 0 {
		t.Fatalf("a reset counted on a dead connection: %+v", st)
	}
}

// A write outside a transaction whose answer is lost after PostgreSQL
// committed it (the network cut) is not run again: pgconn reports such a
// failure, for a statement sent in the simple protocol (pgx's Exec with no
// arguments), as "conn closed", which it says is safe to retry. It is
// ErrCommitUnknown, and PostgreSQL holds the row once.
func TestStatementAnswerLost(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cuts the connection to the server")
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".lost (n int)")
	mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".lost TO "+env.Role())
	px := newProxy(t, env)
	p := poolOn(t, env, openDSN(t, px.DSN()), &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	keepAcrossMute(p)
	rows := func() int {
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".lost").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The connection made and kept, so that the INSERT is the first
	// statement of the next unit on it, which a retry would follow.
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SELECT 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			px.Mute() // the INSERT reaches the server, its answer does not come back
			_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (1)")
			return err
		})
	}()
	eventually(t, "the row committed", func() bool { return rows() == 1 })
	px.Cut()
	px.Restore() // a retry would find the server again
	var err error
	noHang(t, "the INSERT", func() { err = <-done })
	if n := rows(); !errors.Is(err, dbctx.ErrCommitUnknown) || n != 1 {
		t.Fatalf("an INSERT that PostgreSQL committed, its answer lost: %v, %d rows; want ErrCommitUnknown, 1 row", err, n)
	}
	if n := p.Stats().OutcomesUnknown; n != 1 {
		t.Errorf("Stats.OutcomesUnknown = %d, want 1", n)
	}
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (2)")
		return err
	}); err != nil || rows() != 2 {
		t.Fatalf("the next unit of work: %v, %d rows", err, rows())
	}
}

// The same where PostgreSQL ends the session after the commit: a backend
// terminated while its commit waits for a synchronous standby warns that
// the transaction "has already committed locally" and closes the
// connection. In a cluster of the test's own, whose commits wait for a
// standby that never comes.
func TestStatementCommittedAsSessionEnds(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgserver.StartCluster(ctx, t.Logf, "")
	if err != nil {
		t.Skipf("no throwaway cluster: %v", err)
	}
	t.Cleanup(srv.Stop)
	admin := openDSN(t, srv.URL)
	mustExec(t, admin, "CREATE TABLE t (n int)")
	mustExec(t, admin, "ALTER ROLE postgres SET synchronous_commit = local") // admin's own commits do not wait
	admin.SetMaxIdleConns(0)
	admin = openDSN(t, srv.URL)
	mustExec(t, admin, "ALTER SYSTEM SET synchronous_commit = on") // the throwaway cluster's is off
	mustExec(t, admin, "ALTER SYSTEM SET synchronous_standby_names = 'nosuch'")
	mustExec(t, admin, "SELECT pg_reload_conf()")
	mustExec(t, admin, "CREATE ROLE app LOGIN")
	mustExec(t, admin, "GRANT ALL ON t TO app")
	p := dbctx.New(openDSN(t, dsn(pgserver.WithParams(dsn(pgserver.WithUser(srv.URL, "app", "")), "application_name", "waits"))),
		&dbctx.Options{Logger: quiet()})
	defer p.Close()
	done := make(chan error, 1)
	go func() {
		done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
	}()
	var pid int
	eventually(t, "the INSERT's commit waiting for the standby, its backend terminated", func() bool {
		select {
		case err := <-done:
			t.Fatalf("the INSERT ended before: %v", err)
		default:
		}
		return admin.QueryRow(`SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE application_name = 'waits' AND wait_event = 'SyncRep' LIMIT 1`).Scan(&pid, new(bool)) == nil
	})
	// Lifted before the backend has seen its termination, the wait would
	// end as a standby's answer ends it, the COMMIT answered: wait for the
	// backend's end first.
	eventually(t, "the terminated backend's end", func() bool {
		var n int
		return admin.QueryRow(`SELECT count(*) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&n) == nil && n == 0
	})
	mustExec(t, admin, "ALTER SYSTEM SET synchronous_standby_names = ''") // a retry's commit would not wait
	mustExec(t, admin, "SELECT pg_reload_conf()")
	noHang(t, "the INSERT", func() { err = <-done })
	var n int
	if qerr := admin.QueryRow("SELECT count(*) FROM t").Scan(&n); qerr != nil {
		t.Fatal(qerr)
	}
	if !errors.Is(err, dbctx.ErrCommitUnknown) || n != 1 {
		t.Fatalf("an INSERT committed as its session ended: %v, %d rows; want ErrCommitUnknown, 1 row", err, n)
	}
}

// The error of a statement whose session was lost says so through every
// method, also where the driver's own error is driver.ErrBadConn: on
// another driver than pgx's, a statement whose settings the server
// refused (a value it cannot take), then a backend killed, made the next
// QueryRowContext or QueryContext fail with an error that read "session
// lost" but was not errors.Is ErrSessionLost (the scope's results are
// handed out through a bridge of database/sql's, which kept
// driver.ErrBadConn from database/sql's retries by hiding the whole
// chain).
func TestSessionLostSeenThroughBadConn(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills the scope's own backend, which PgBouncer would replace")
	for _, method := range []string{"QueryRowContext", "QueryContext"} {
		t.Run(method, func(t *testing.T) {
			t.Parallel()
			p, env := newPoolWith(t, otherDriver, &dbctx.Options{Logger: quiet()})
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				var x int
				if err := s.QueryRowContext(tenant.With(ctx, "\xff"), "SELECT 1").Scan(&x); err == nil {
					t.Fatal("a tenant PostgreSQL cannot take was taken")
				}
				env.Terminate(t)
				if method == "QueryRowContext" {
					err := s.QueryRowContext(ctx, "SELECT 1").Scan(&x)
					if !errors.Is(err, dbctx.ErrSessionLost) {
						t.Errorf("%v (%T): want ErrSessionLost", err, err)
					}
					return nil
				}
				rows, err := s.QueryContext(ctx, "SELECT 1")
				if err == nil {
					rows.Close()
				}
				if !errors.Is(err, dbctx.ErrSessionLost) {
					t.Errorf("%v (%T): want ErrSessionLost", err, err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
