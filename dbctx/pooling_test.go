package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Under TransactionPooling a statement that sets session-level state is
// refused before it is sent: PostgreSQL, asked on the same connection,
// holds none of it. Transaction-local state works, inside Atomic.
func TestTransactionPoolingRefusesSessionState(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	refused := []string{
		"SET app.tenant = '42'",
		"/* tag */ SET search_path = pg_catalog",
		"SELECT 1; SET app.tenant = '42'",
		"SELECT set_config('app.tenant', '42', false)",
		"SELECT set_config('app.tenant', $1, $2)",
		"SET ROLE pg_read_all_stats",
		"SET SESSION AUTHORIZATION DEFAULT",
		"RESET ALL",
		"LISTEN ch",
		"PREPARE p AS SELECT 1",
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1",
		"CREATE TEMP TABLE scratch (n int)",
		"SELECT pg_advisory_lock(1)",
		"DISCARD ALL",
		"SELECT 'a' OPERATOR(||) set_config('app.tenant', '42', false)",
		"SET LOCAL search_path = E'pg\\x5ftemp'",
		"SELECT set_config('search_path', 'pg_' || 'temp', true)",
		"SELECT E'\x95\x5c', set_config('app.tenant', '42', false) -- '",
		"SET LOCAL seed = 0.5",
		"SET LOCAL SCHEMA E'pg\\137temp'",
		"UPDATE pg_settings SET setting = '4242' WHERE name = 'work_mem'",
		"SELECT (1::bigint).pg_advisory_lock",
	}
	probe := func() string {
		var s string
		if err := p.Do(ctx, func(ctx context.Context, s2 *dbctx.Scope) error {
			return s2.QueryRowContext(ctx, `SELECT concat_ws(' ', nullif(current_setting('app.tenant', true), ''),
				current_setting('search_path'), current_user, (SELECT count(*) FROM pg_listening_channels()),
				(SELECT count(*) FROM pg_prepared_statements WHERE from_sql), (SELECT count(*) FROM pg_cursors),
				(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),
				(SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()))`).Scan(&s)
		}); err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := probe()
	for _, q := range refused {
		for _, inAtomic := range []bool{false, true} {
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				if !inAtomic {
					_, err := s.ExecContext(ctx, q, "42", false)
					return err
				}
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := s.ExecContext(ctx, q, "42", false)
					return err
				})
			})
			if !errors.Is(err, dbctx.ErrSessionState) {
				t.Errorf("%q (in Atomic: %v): %v, want ErrSessionState", q, inAtomic, err)
			}
			if got := probe(); got != base {
				t.Errorf("%q (in Atomic: %v) reached the session: %q, was %q", q, inAtomic, got, base)
			}
		}
	}
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.PrepareContext(ctx, "SELECT 1")
		return err
	})
	if !errors.Is(err, dbctx.ErrSessionState) {
		t.Errorf("PrepareContext: %v, want ErrSessionState", err)
	}
	// What stays in the transaction works.
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			for _, q := range []string{
				"SET LOCAL app.tenant = '7'",
				"SELECT set_config('app.other', '8', true)",
				"SELECT pg_advisory_xact_lock(1)",
				"CREATE TEMP TABLE scratch (n int) ON COMMIT DROP",
			} {
				if _, err := s.ExecContext(ctx, q); err != nil {
					return fmt.Errorf("%s: %w", q, err)
				}
			}
			var v string
			if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant') || current_setting('app.other')").Scan(&v); err != nil || v != "78" {
				return fmt.Errorf("in the transaction: %q, %v", v, err)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := probe(); got != base {
		t.Errorf("transaction-local state outlived its transaction: %q, was %q", got, base)
	}
	// No reset: it would reach some other server connection.
	if st := p.Stats(); st.Resets != 0 {
		t.Errorf("resets = %d, want 0", st.Resets)
	}
}

// Under TransactionPooling a statement that reads sequence state (currval,
// lastval) is refused before it is sent, through database/sql and through a
// pgx batch: behind a pooler that state is whatever the last client of the
// server connection left. Taking a value (nextval, a serial INSERT) is not.
func TestTransactionPoolingRefusesSequenceReads(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	if _, err := env.Admin().ExecContext(ctx, "CREATE SEQUENCE "+env.Schema()+".s"); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"SELECT currval('s')", "SELECT lastval()", "SELECT 1, pg_catalog.currval('s')"} {
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "SELECT nextval('s')"); err != nil {
				return fmt.Errorf("nextval: %w", err)
			}
			_, err := s.ExecContext(ctx, q)
			return err
		})
		if !errors.Is(err, dbctx.ErrSessionState) {
			t.Errorf("%q: %v, want ErrSessionState", q, err)
		}
		err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue("SELECT nextval('s')")
			b.Queue(q)
			return s.SendBatch(ctx, b).Close()
		})
		if !errors.Is(err, dbctx.ErrSessionState) {
			t.Errorf("%q in a batch: %v, want ErrSessionState", q, err)
		}
	}
}

// TransactionPooling refuses, at New, the options that rely on sessions.
func TestTransactionPoolingOptions(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	db := env.Open(t)
	for name, o := range map[string]dbctx.Options{
		"OnAcquire":   {TransactionPooling: true, OnAcquire: func(context.Context, *sql.Conn) error { return nil }},
		"ResetAlways": {TransactionPooling: true, ResetAlways: true},
	} {
		func() {
			defer func() {
				if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "dbctx: New") {
					t.Errorf("%s: New did not panic (%v)", name, r)
				}
			}()
			dbctx.New(db, &o)
		}()
	}
}

// OnBegin sets transaction-local state in every transaction a scope
// begins, Atomic's and BeginTx's, and only there; its error rolls the
// transaction back and is returned.
func TestOnBegin(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	fail := errors.New("no tenant")
	p := onePool(t, env, dbctx.Options{
		OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
			tenant, _ := ctx.Value(tenantKey{}).(string)
			if tenant == "" {
				return fail
			}
			_, err := s.ExecContext(ctx, "SELECT set_config('app.tenant', $1, true)", tenant)
			return err
		},
	})
	ctx := context.WithValue(context.Background(), tenantKey{}, "7")
	tenant := func(ctx context.Context, s *dbctx.Scope) (v sql.NullString, err error) {
		err = s.QueryRowContext(ctx, "SELECT nullif(current_setting('app.tenant', true), '')").Scan(&v)
		return v, err
	}
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if v, err := tenant(ctx, s); err != nil || v.Valid {
			return fmt.Errorf("outside a transaction: %v, %v", v, err)
		}
		if err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			v, err := tenant(ctx, s)
			if err == nil && v.String != "7" {
				err = fmt.Errorf("in Atomic: %v", v)
			}
			return err
		}); err != nil {
			return err
		}
		tx, err := s.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		var v string
		if err := tx.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&v); err != nil || v != "7" {
			return fmt.Errorf("in BeginTx's transaction: %q, %v", v, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
	})
	if !errors.Is(err, fail) {
		t.Fatalf("OnBegin's error: %v", err)
	}
	// A handler that ignores the error gets it from every statement, and
	// its commit fails: nothing runs in a transaction without OnBegin's
	// state.
	var errs []error
	err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			for range 2 {
				_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (2)")
				errs = append(errs, err)
			}
			return nil
		})
	})
	if err == nil || len(errs) != 2 || !errors.Is(errs[0], fail) || !errors.Is(errs[1], fail) {
		t.Fatalf("after OnBegin failed: statements %v, Atomic %v", errs, err)
	}
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows (%v): the insert after OnBegin failed was committed", n, err)
	}
}

// Behind PgBouncer in transaction mode, with fewer server connections than
// clients, in each exec mode that works there: no statement fails, and no
// scope sees another's tenant, set per transaction by OnBegin.
func TestBehindPgBouncer(t *testing.T) {
	t.Parallel()
	bouncer := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 3})
	for _, mode := range []string{"exec", "simple_protocol", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			env := newEnv(t)
			db := openDSN(t, bouncer.DSN(env, "default_query_exec_mode", mode))
			const clients, units = 24, 20
			p := poolOn(t, env, db, &dbctx.Options{
				MaxWorkers:         clients,
				TransactionPooling: true,
				OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, "SELECT set_config('app.tenant', $1, true)", ctx.Value(tenantKey{}))
					return err
				},
			})
			var leaks, failures atomic.Int64
			var wg sync.WaitGroup
			for c := range clients {
				wg.Go(func() {
					for u := range units {
						tenant := fmt.Sprintf("%d-%d", c, u)
						ctx := context.WithValue(context.Background(), tenantKey{}, tenant)
						err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
							var v sql.NullString
							if err := s.QueryRowContext(ctx, "SELECT nullif(current_setting('app.tenant', true), '')").Scan(&v); err != nil {
								return err
							}
							if v.Valid {
								leaks.Add(1) // a tenant outside any transaction of ours
							}
							if _, err := s.ExecContext(ctx, "SET app.tenant = 'session'"); !errors.Is(err, dbctx.ErrSessionState) {
								return fmt.Errorf("a SET: %v, want ErrSessionState", err)
							}
							return dbctx.Atomic(ctx, func(ctx context.Context) error {
								var got string
								if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant') || ':' || $1::int", u).Scan(&got); err != nil {
									return err
								}
								if got != tenant+":"+fmt.Sprint(u) {
									leaks.Add(1)
								}
								return nil
							})
						})
						if err != nil {
							failures.Add(1)
							t.Errorf("client %d, unit %d: %v", c, u, err)
						}
					}
				})
			}
			wg.Wait()
			if leaks.Load() != 0 || failures.Load() != 0 {
				t.Fatalf("%d leaks, %d failures in %d units", leaks.Load(), failures.Load(), clients*units)
			}
		})
	}
}

// With pgx's default exec mode, TransactionPooling warns once, naming the
// fix; behind PgBouncer that mode fails statements, and the first failure
// of pgx's cached statements is logged once with the fix too.
func TestBehindPgBouncerCacheStatement(t *testing.T) {
	t.Parallel()
	bouncer := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 2})
	env := newEnv(t)
	var log syncBuffer
	db := openDSN(t, bouncer.DSN(env, "default_query_exec_mode", "cache_statement"))
	p := poolOn(t, env, db, &dbctx.Options{
		MaxWorkers:         8,
		TransactionPooling: true,
		Logger:             slog.New(slog.NewTextHandler(&log, nil)),
	})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for c := range 8 {
		wg.Go(func() {
			for i := range 20 {
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, fmt.Sprintf("SELECT %d + $1::int", i%4), c)
					return err
				})
				if err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	out := log.String()
	if n := strings.Count(out, "default_query_exec_mode=exec"); n < 1 {
		t.Fatalf("no warning naming the fix in the log:\n%s", out)
	}
	if strings.Count(out, "TransactionPooling with pgx's default_query_exec_mode") != 1 {
		t.Errorf("the exec-mode warning is not logged exactly once:\n%s", out)
	}
	if failed.Load() > 0 && strings.Count(out, "cached prepared statements are missing or duplicated") != 1 {
		t.Errorf("%d statements failed, but their cause is not logged exactly once:\n%s", failed.Load(), out)
	}
	t.Logf("%d of 160 statements failed under cache_statement", failed.Load())
}

// PgBouncer stopped and started again under load: work fails only while
// it is down, at once, and work begun once it has exited fails with
// ErrUnavailable; once a client's work succeeds again, nothing of it
// fails. While PgBouncer shuts down, a statement may be caught on a
// connection it closes (more than one per client, where the next
// connection's close has not arrived when it is checked): its error is
// the cut connection's, since it may have run.
func TestPgBouncerRestart(t *testing.T) {
	t.Parallel()
	bouncer := pgtest.StartPgBouncer(t, nil)
	env := newEnv(t)
	db := openDSN(t, bouncer.DSN(env, "default_query_exec_mode", "exec", "connect_timeout", "2"))
	const clients = 8
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: clients, TransactionPooling: true, Logger: quiet()})
	// Every check-out looks at the socket: a connection given back a
	// moment ago is not looked at otherwise (health.go), and one given
	// back just after PgBouncer's exit would fail with its cut connection.
	p.SetRecent(0)
	var down atomic.Bool // PgBouncer has exited
	type client struct {
		ok, failed       atomic.Int64
		recovered        atomic.Bool // succeeded after failing
		lateFailures     atomic.Int64
		slowest          atomic.Int64 // ns, of a failure
		otherThanUnavail atomic.Int64
		other            atomic.Value // error: the first of them
		mark             int64        // failed, then ok, when a phase began
	}
	var cs [clients]client
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range clients {
		c := &cs[i]
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				start, wasDown := time.Now(), down.Load()
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT $1::int", i)
					return err
				})
				switch {
				case err == nil && c.failed.Load() > 0:
					c.recovered.Store(true)
					c.ok.Add(1)
				case err == nil:
					c.ok.Add(1)
				case c.recovered.Load():
					c.lateFailures.Add(1)
				default:
					if c.failed.Add(1); wasDown && !errors.Is(err, dbctx.ErrUnavailable) {
						if c.otherThanUnavail.Add(1) == 1 {
							c.other.Store(err)
						}
					}
					if d := int64(time.Since(start)); d > c.slowest.Load() {
						c.slowest.Store(d)
					}
				}
			}
		})
	}
	all := func(what string, cond func(c *client) bool) {
		eventually(t, what, func() bool {
			for i := range cs {
				if !cond(&cs[i]) {
					return false
				}
			}
			return true
		})
	}
	all("every client to succeed", func(c *client) bool { return c.ok.Load() > 10 })
	for i := range cs {
		if n := cs[i].failed.Load(); n != 0 {
			t.Fatalf("client %d: %d failures before the stop", i, n)
		}
	}
	bouncer.Stop()
	down.Store(true)
	all("every client to fail while PgBouncer is down", func(c *client) bool { return c.failed.Load() > 2 })
	// Work begun after the exit fails too (below: with ErrUnavailable).
	for i := range cs {
		cs[i].mark = cs[i].failed.Load()
	}
	all("every client's work begun after PgBouncer's exit to fail", func(c *client) bool { return c.failed.Load() > c.mark+1 })
	bouncer.Start()
	all("every client to recover", func(c *client) bool { return c.recovered.Load() })
	for i := range cs {
		cs[i].mark = cs[i].ok.Load()
	}
	all("every client to run on", func(c *client) bool { return c.ok.Load() > c.mark+20 })
	close(stop)
	wg.Wait()
	for i := range cs {
		c := &cs[i]
		if n := c.lateFailures.Load(); n != 0 {
			t.Errorf("client %d: %d failures after it had recovered", i, n)
		}
		if n := c.otherThanUnavail.Load(); n != 0 {
			t.Errorf("client %d: %d failures of work begun after PgBouncer's exit other than ErrUnavailable, the first: %v", i, n, c.other.Load())
		}
		if d := time.Duration(c.slowest.Load()); d > 5*time.Second {
			t.Errorf("client %d: a failure took %v, want at once", i, d)
		}
	}
}

// A pool behind PgBouncer that does not declare TransactionPooling is
// told, once, on its first connection; one that declares it, and one
// straight to PostgreSQL, are told nothing.
func TestPoolerWarned(t *testing.T) {
	t.Parallel()
	bouncer := pgtest.StartPgBouncer(t, nil)
	const warning = "a pooler sits between"
	for _, tc := range []struct {
		name        string
		via, pooled bool
		warned      int
	}{
		{"behind PgBouncer", true, false, 1},
		{"behind PgBouncer, TransactionPooling", true, true, 0},
		{"direct", false, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if !tc.via && pgtest.Pooled() {
				t.Skip("the suite's server is itself behind a pooler")
			}
			env := newEnv(t)
			db := env.Open(t)
			if tc.via {
				db = openDSN(t, bouncer.DSN(env, "default_query_exec_mode", "exec"))
			}
			var log syncBuffer
			p := poolOn(t, env, db, &dbctx.Options{
				MaxWorkers:         2,
				TransactionPooling: tc.pooled,
				Logger:             slog.New(slog.NewTextHandler(&log, nil)),
			})
			for range 3 {
				if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := backendPID(ctx, s)
					return err
				}); err != nil {
					t.Fatal(err)
				}
			}
			if n := strings.Count(log.String(), warning); n != tc.warned {
				t.Errorf("warned %d times, want %d: %s", n, tc.warned, log.String())
			}
		})
	}
}

// pgx's simple protocol sends a batch's queries joined by ";" as one
// string, which PostgreSQL reads whole: three queries none of which it
// could run alone (a quote opened in one closes in the next) are three it
// runs, the middle one trying a session advisory lock and setting a
// setting. Under TransactionPooling the batch is refused before it is
// sent (it was let through, each query read as unknown alone); without,
// the next unit of work on the connection holds neither.
func TestBatchReadJoined(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "asks the session of one connection")
	batches := [][]string{
		{`SELECT 1 AS "`, `"; SELECT pg_try_advisory_lock(99), set_config('app.joined', 'leaked', false); SELECT 1 AS "`, `"`},
		// pgx joins them with "\n;": a -- comment at the end of one
		// ends at the newline.
		{"SELECT 1 --", "SELECT '", "x'; SELECT pg_try_advisory_lock(99), set_config('app.joined', 'leaked', false)"},
	}
	held := func(ctx context.Context, s *dbctx.Scope) (string, error) {
		var v string
		err := s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.joined', true), '') || "+
			"(SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())").Scan(&v)
		return v, err
	}
	for i, tp := range []bool{true, false, true, false} {
		env := newEnv(t)
		p := onePoolInMode(t, env, "simple_protocol", dbctx.Options{TransactionPooling: tp, Logger: quiet()})
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			for _, q := range batches[i/2] {
				b.Queue(q)
			}
			return s.SendBatch(ctx, b).Close()
		})
		if tp && !errors.Is(err, dbctx.ErrSessionState) || !tp && err != nil {
			t.Errorf("batch %d, TransactionPooling %v: the batch: %v", i/2, tp, err)
		}
		err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			v, err := held(ctx, s)
			if err == nil && v != "0" {
				err = fmt.Errorf("the next unit holds %q (setting, advisory locks), want none", v)
			}
			return err
		})
		if err != nil {
			t.Errorf("batch %d, TransactionPooling %v: %v", i/2, tp, err)
		}
	}
}

// A statement that waits in PgBouncer for a server connection past its
// query_wait_timeout (every one of its pool in use) is refused there, before
// it reaches PostgreSQL: that is overload, ErrBusy (503, close 1013), counted
// and logged, whether it is the unit's first statement or a later one. It
// came back as PgBouncer's bare FATAL, which middleware answered with 500 as
// the handler's own error. The statement did not run; the next unit runs
// with its own tenant.
func TestPgBouncerQueryWaitTimeoutBusy(t *testing.T) {
	t.Parallel()
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 1, QueryWaitTimeout: time.Second})
	env := newEnv(t)
	rls(t, env)
	db := openDSN(t, b.DSN(env, "default_query_exec_mode", "exec"))
	logs, logger := dbtest.NewLogs()
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 3, TransactionPooling: true, Logger: logger})
	if v := see(t, p, tenant.With(context.Background(), "t1")); v != (seen{"t1", 10}) {
		t.Fatalf("before: %+v", v)
	}
	for _, later := range []bool{false, true} {
		// Another unit holds PgBouncer's one server connection, from
		// before the statement (after the unit's first, where later).
		start, holding := make(chan struct{}), make(chan struct{})
		held := make(chan error, 1)
		go func() {
			<-start
			held <- p.Do(tenant.With(context.Background(), "t1"), func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
						return err
					}
					close(holding)
					_, err := s.ExecContext(ctx, "SELECT pg_sleep(4)")
					return err
				})
			})
		}()
		id := newID()
		busy := p.Stats().Busy
		err := p.Do(tenant.With(context.Background(), "t2"), func(ctx context.Context, s *dbctx.Scope) error {
			if later {
				if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
					return fmt.Errorf("the first statement: %w", err)
				}
			}
			close(start)
			<-holding
			_, err := s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'x')", id)
			return err
		})
		if !errors.Is(err, dbctx.ErrBusy) {
			t.Errorf("later %v: %v, want ErrBusy", later, err)
		}
		if n := p.Stats().Busy - busy; n < 1 {
			t.Errorf("later %v: Stats.Busy rose by %d", later, n)
		}
		if err := <-held; err != nil {
			t.Fatalf("the unit holding the server connection: %v", err)
		}
		if v := inserted(t, env, id); v.items != 0 {
			t.Errorf("later %v: the refused statement ran: %+v", later, v)
		}
		if v := see(t, p, tenant.With(context.Background(), "t3")); v != (seen{"t3", 10}) {
			t.Errorf("later %v: the next unit sees %+v", later, v)
		}
	}
	// Told at once, its repeats within 10 s aggregated (one per refused
	// statement would bury the log under a burst).
	if n := logs.Count(slog.LevelWarn, "dbctx: PgBouncer found no free server connection"); n < 1 {
		t.Errorf("told at Warn %d times, want the first refusal told", n)
	}
}

// Under TransactionPooling, CopyFrom into a table of pg_temp is refused
// as a text that names pg_temp is: behind a pooler the table is whichever
// client's the server connection holds. One found by the search_path
// (a temporary table of the unit's own transaction) is not.
func TestTransactionPoolingRefusesCopyIntoTemp(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	rows := func() pgx.CopyFromSource { return pgx.CopyFromRows([][]any{{int32(1)}}) }
	for _, table := range []pgx.Identifier{{"pg_temp", "scratch"}, {"pg_temp_3", "scratch"}, {"pg_toast_temp_3", "scratch"}} {
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.CopyFrom(ctx, table, []string{"n"}, rows())
			return err
		})
		if !errors.Is(err, dbctx.ErrSessionState) {
			t.Errorf("CopyFrom %v: %v, want ErrSessionState", table, err)
		}
	}
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "CREATE TEMP TABLE scratch (n int) ON COMMIT DROP"); err != nil {
				return err
			}
			_, err := s.CopyFrom(ctx, pgx.Identifier{"scratch"}, []string{"n"}, rows())
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// rewriteTo is a pgx.QueryRewriter of the user's (not pgx's named
// arguments): the text pgx runs is its own, not the one dbscope read.
type rewriteTo string

func (r rewriteTo) RewriteQuery(ctx context.Context, conn *pgx.Conn, sql string, args []any) (string, []any, error) {
	return string(r), nil, nil
}

// Under TransactionPooling, a statement given a QueryRewriter of the
// user's is refused where the text it rewrites to sets session state
// (or reads sequence state), before any of it is sent, through every
// path that takes one; it ran, unrefused, and its setting stayed on the
// server connection for the pooler's next client. A text that leaves
// nothing runs.
func TestTransactionPoolingRefusesRewrittenSessionState(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	const leak = rewriteTo("SELECT set_config('app.rewritten', 'leak', false)")
	paths := map[string]func(ctx context.Context, s *dbctx.Scope, rw any) error{
		"Exec": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			_, err := s.Exec(ctx, "SELECT 1", rw)
			return err
		},
		"QueryRow": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			var v string
			return s.QueryRow(ctx, "SELECT 1", pgx.QueryExecModeExec, rw).Scan(&v)
		},
		"Query": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			rows, err := s.Query(ctx, "SELECT 1", rw)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		},
		"ExecContext, sql.Named": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			_, err := s.ExecContext(ctx, "SELECT 1", sql.Named("rw", rw))
			return err
		},
		"QueryRowContext": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			var v string
			return s.QueryRowContext(ctx, "SELECT 1", rw).Scan(&v)
		},
		"QueryContext": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			rows, err := s.QueryContext(ctx, "SELECT 1", rw)
			if err != nil {
				return err
			}
			rows.Close()
			return rows.Err()
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope, rw any) error {
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			b.Queue("SELECT 2", rw)
			return s.SendBatch(ctx, b).Close()
		},
	}
	for name, run := range paths {
		for _, inAtomic := range []bool{false, true} {
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				if !inAtomic {
					return run(ctx, s, leak)
				}
				return dbctx.Atomic(ctx, func(ctx context.Context) error { return run(ctx, s, leak) })
			})
			if !errors.Is(err, dbctx.ErrSessionState) {
				t.Errorf("%s (in Atomic: %v): %v, want ErrSessionState", name, inAtomic, err)
			}
			var got string
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.rewritten', true), '')").Scan(&got)
			}); err != nil {
				t.Fatal(err)
			}
			if got != "" {
				t.Fatalf("%s (in Atomic: %v): the rewritten text's setting reached the server session: %q", name, inAtomic, got)
			}
		}
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return run(ctx, s, rewriteTo("SELECT 'fine'"))
		}); err != nil {
			t.Errorf("%s, a clean rewritten text: %v", name, err)
		}
	}
}

// Under TransactionPooling a column named as a built-in of sequence state
// (a reading's lastval, currval), read qualified by its table, is read:
// t.f calls f(t) only for a t of FROM, and lastval takes no argument. It
// was refused with ErrSessionState, taken for the call in attribute
// notation that ('s'::regclass).currval is.
func TestTransactionPoolingReadsColumnNamedLastval(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".readings (sensor int, lastval float8, currval float8)")
	mustExec(t, env.Admin(), "INSERT INTO "+env.Schema()+".readings VALUES (1, 2.5, 3.5)")
	p := onePool(t, env, dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	for _, q := range []string{
		"SELECT r.lastval + r.currval FROM readings r WHERE r.sensor = 1",
		"SELECT (r).lastval FROM readings r",
		"SELECT readings.currval FROM readings",
	} {
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			var v float64
			return s.QueryRowContext(ctx, q).Scan(&v)
		})
		if err != nil {
			t.Errorf("%s: %v", q, err)
		}
	}
}

// A batch PgBouncer refused with query_wait_timeout is ErrBusy too, from
// its results and its Close, counted once: its errors came back bare
// (FATAL 08P01), which middleware answered 500 with, uncounted.
func TestPgBouncerQueryWaitTimeoutBusyBatch(t *testing.T) {
	t.Parallel()
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 1, QueryWaitTimeout: time.Second})
	env := newEnv(t)
	for _, mode := range []string{"exec", "cache_statement"} {
		db := openDSN(t, b.DSN(env, "default_query_exec_mode", mode))
		p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 3, TransactionPooling: true, Logger: quiet()})
		start, holding := make(chan struct{}), make(chan struct{})
		held := make(chan error, 1)
		go func() {
			<-start
			held <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
						return err
					}
					close(holding)
					_, err := s.ExecContext(ctx, "SELECT pg_sleep(2)")
					return err
				})
			})
		}()
		busy := p.Stats().Busy
		var execErr error
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			close(start)
			<-holding
			var bt pgx.Batch
			bt.Queue("SELECT 1")
			br := s.SendBatch(ctx, &bt)
			_, execErr = br.Exec()
			return br.Close()
		})
		if !errors.Is(execErr, dbctx.ErrBusy) || !errors.Is(err, dbctx.ErrBusy) {
			t.Errorf("%s: Exec %v, Close %v; want ErrBusy", mode, execErr, err)
		}
		if n := p.Stats().Busy - busy; n != 1 {
			t.Errorf("%s: Stats.Busy rose by %d, want 1", mode, n)
		}
		if err := <-held; err != nil {
			t.Fatalf("%s: the unit holding the server connection: %v", mode, err)
		}
	}
}
