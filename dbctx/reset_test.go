package dbctx_test

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

type tenantKey struct{}

// 10,000 scopes alternate between two tenants on one physical connection;
// none may see the other's setting, whether set by the OnAcquire hook, a
// SET or set_config in user code.
func TestNoTenantLeak(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{
		OnAcquire: func(ctx context.Context, c *sql.Conn) error {
			tenant, _ := ctx.Value(tenantKey{}).(string)
			_, err := c.ExecContext(ctx, "SELECT set_config('app.tenant', $1, false)", tenant)
			return err
		},
	})
	scopes := 10000
	if testing.Short() {
		scopes = 1000
	}
	var pid int
	leaks := 0
	for i := range scopes {
		tenant := fmt.Sprintf("tenant-%d", i%2)
		ctx := context.WithValue(context.Background(), tenantKey{}, tenant)
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			var got, other, pidNow sql.NullString
			err := s.QueryRowContext(ctx, `SELECT current_setting('app.tenant', true),
				current_setting('app.other', true), pg_backend_pid()::text`).Scan(&got, &other, &pidNow)
			if err != nil {
				return err
			}
			if got.String != tenant || other.String != "" {
				leaks++
			}
			if i == 0 {
				fmt.Sscan(pidNow.String, &pid)
			} else if pidNow.String != fmt.Sprint(pid) {
				return fmt.Errorf("scope %d on backend %s, want %d", i, pidNow.String, pid)
			}
			if i%2 == 0 {
				_, err = s.ExecContext(ctx, "SET app.other = 'from-"+tenant+"'")
			} else {
				_, err = s.ExecContext(ctx, "SELECT set_config('app.other', $1, false)", "from-"+tenant)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if leaks != 0 {
		t.Fatalf("%d of %d scopes saw another scope's session state", leaks, scopes)
	}
}

// Each kind of session state left by one scope is gone for the next scope
// on the same connection.
func TestNoSessionStateLeak(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		leave string // run by the first scope
		probe string // run by the next: must return 0
	}{
		{"setting", "SET statement_timeout = '5s'",
			"SELECT (current_setting('statement_timeout') <> '0')::int"},
		{"role", "SET ROLE pg_read_all_stats",
			"SELECT (current_user <> session_user)::int"},
		{"temp table", "CREATE TEMP TABLE scratch (n int)",
			"SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relnamespace = pg_my_temp_schema()"},
		{"advisory lock", "SELECT pg_advisory_lock(42)",
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"},
		{"advisory lock in attribute notation", "SELECT (42::bigint).pg_advisory_lock",
			"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"},
		{"listen", "LISTEN dbscope_test",
			"SELECT count(*) FROM pg_listening_channels()"},
		{"prepared statement", "PREPARE dbscope_p AS SELECT 1",
			"SELECT count(*) FROM pg_prepared_statements WHERE name = 'dbscope_p'"},
		{"search path", "SET search_path = pg_catalog",
			"SELECT (current_setting('search_path') = 'pg_catalog')::int"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			p := onePool(t, env, dbctx.Options{})
			ctx := context.Background()
			var pids [2]int
			for i, q := range []string{tc.leave, tc.probe} {
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					var err error
					if pids[i], err = backendPID(ctx, s); err != nil {
						return err
					}
					if i == 0 {
						_, err := s.ExecContext(ctx, q)
						return err
					}
					n, err := queryInt(ctx, s, q)
					if err == nil && n != 0 {
						t.Errorf("%q left state visible to the next scope", tc.leave)
					}
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			if pids[0] != pids[1] {
				t.Fatalf("scopes ran on backends %d and %d; the test needs one", pids[0], pids[1])
			}
		})
	}
}

// A scope that only reads pays no reset round trip.
func TestCleanScopeNoReset(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	for range 3 {
		if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	if st := p.Stats(); st.Resets != 0 {
		t.Fatalf("resets = %d, want 0", st.Resets)
	}
}

// Reset, retry and Atomic work in every pgx query execution mode, the
// simple protocol included (as PgBouncer setups often use).
func TestQueryExecModes(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			if mode == "cache_statement" {
				// Its statements are prepared in one transaction and run
				// in a later one, which a pooler in transaction mode may
				// send to another server connection.
				pgtest.SkipPooled(t, "cache_statement needs one server session")
			}
			env := newEnv(t)
			p := onePoolInMode(t, env, mode, dbctx.Options{})
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
			ctx := context.Background()
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := s.ExecContext(ctx, "SET statement_timeout = '7s'"); err != nil {
					return err
				}
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := s.ExecContext(ctx, "INSERT INTO t VALUES ($1)", 1)
					return err
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			env.Terminate(t) // the next scope must not notice
			n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
				var timeout string
				if err := s.QueryRowContext(ctx, "SELECT current_setting('statement_timeout')").Scan(&timeout); err != nil {
					return 0, err
				}
				if timeout == "7s" {
					t.Error("a setting leaked to the next scope")
				}
				return queryInt(ctx, s, "SELECT count(*) FROM t WHERE n = $1", 1)
			})
			if err != nil || n != 1 {
				t.Fatalf("%d rows, %v", n, err)
			}
		})
	}
}

// What no reset undoes closes the connection instead: after DISCARD ALL
// or DEALLOCATE ALL, pgx's cached statements are gone from the session,
// and the next scope would fail on them; after LOAD, the library stays.
func TestUnresettableSessionDiscarded(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "tells a discarded session by its backend pid")
	for _, stmt := range []string{"DISCARD ALL", "DEALLOCATE ALL", "LOAD 'auto_explain'", "SELECT setseed(0.5)"} {
		t.Run(stmt, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			p := onePool(t, env, dbctx.Options{})
			ctx := context.Background()
			const cached = "SELECT $1::int + 1" // prepared and cached by pgx
			use := func(q string) (pid int) {
				t.Helper()
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					if _, err := queryInt(ctx, s, cached, 1); err != nil {
						return err
					}
					if q != "" {
						if _, err := s.ExecContext(ctx, q); err != nil {
							return err
						}
					}
					var err error
					pid, err = backendPID(ctx, s)
					return err
				}); err != nil {
					var pe *pgconn.PgError
					if errors.As(err, &pe) && pe.Code == "58P01" {
						t.Skipf("%q: the server lacks the library: %v", q, err)
					}
					t.Fatalf("%q: %v", q, err)
				}
				return pid
			}
			first := use(stmt)
			if next := use(""); next == first {
				t.Fatalf("%q: the next scope got the same backend %d", stmt, next)
			}
			if st := p.Stats(); st.Discarded.Unresettable != 1 {
				t.Fatalf("unresettable discards = %d, want 1", st.Discarded.Unresettable)
			}
		})
	}
}

// DEALLOCATE of one statement a driver prepared (pgx's cache names them
// stmtcache_…) leaves pgx's cache naming a statement the session no
// longer has, as DEALLOCATE ALL does: the next scope's use of it failed
// ("prepared statement … does not exist"), whichever spelling the text
// used. The connection is closed instead.
func TestDeallocateDriverStatementDiscarded(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "tells a discarded session by its backend pid")
	const cached = "SELECT $1::int + 1" // prepared and cached by pgx
	sum := sha256.Sum256([]byte(cached))
	name := "stmtcache_" + hex.EncodeToString(sum[:24]) // as pgx names it
	for _, stmt := range []string{"DEALLOCATE " + name, `DEALLOCATE PREPARE "` + name + `"`} {
		t.Run(stmt, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
			ctx := context.Background()
			var first int
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := queryInt(ctx, s, cached, 1); err != nil {
					return err
				}
				if _, err := s.ExecContext(ctx, stmt); err != nil {
					return err
				}
				var err error
				first, err = backendPID(ctx, s)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			var next int
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var err error
				if next, err = backendPID(ctx, s); err != nil {
					return err
				}
				_, err = queryInt(ctx, s, cached, 1)
				return err
			}); err != nil {
				t.Fatalf("the next scope (backend %d, first %d): %v", next, first, err)
			}
			if st := p.Stats(); st.Discarded.Unresettable != 1 {
				t.Fatalf("unresettable discards = %d, want 1", st.Discarded.Unresettable)
			}
		})
	}
}

// A CREATE of a function of LANGUAGE C loads its library into the session
// (fmgr_c_validator), with the settings it defines, even where it fails:
// no reset undoes it, and the connection is closed instead. (auto_explain
// has no SQL-callable function, so this CREATE fails after the load.)
func TestCFunctionLibraryDiscarded(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "tells a discarded session by its backend pid")
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{Logger: quiet()})
	ctx := context.Background()
	const loaded = "SELECT count(*) FROM pg_settings WHERE name LIKE 'auto_explain.%'"
	var first int
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		if first, err = backendPID(ctx, s); err != nil {
			return err
		}
		_, err = s.ExecContext(ctx, "CREATE FUNCTION h1_c() RETURNS void LANGUAGE C AS '$libdir/auto_explain', 'h1_c'")
		var pe *pgconn.PgError
		if errors.As(err, &pe) && pe.Code == "58P01" {
			t.Skipf("the server lacks auto_explain: %v", err)
		}
		if n, err := queryInt(ctx, s, loaded); err != nil || n == 0 {
			t.Skipf("the CREATE loaded no library here (%d settings, %v)", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	noLibraryNext(t, p, first, loaded)
}

// CREATE EXTENSION runs its script's CREATE FUNCTION … LANGUAGE C, whose
// validator loads the extension's library into the session, with the
// settings it defines (pg_trgm's three), also where the extension is
// dropped or its transaction rolled back: as a CREATE of a function of
// LANGUAGE C, it costs the connection.
func TestCreateExtensionLibraryDiscarded(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "tells a discarded session by its backend pid")
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{Logger: quiet()})
	ctx := context.Background()
	const loaded = "SELECT count(*) FROM pg_settings WHERE name LIKE 'pg\\_trgm.%'"
	var first int
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		if first, err = backendPID(ctx, s); err != nil {
			return err
		}
		if n, err := queryInt(ctx, s, loaded); err != nil || n != 0 {
			t.Skipf("pg_trgm is loaded already here (%d settings, %v)", n, err)
		}
		_, err = s.ExecContext(ctx, "CREATE EXTENSION pg_trgm SCHEMA "+env.Schema())
		var pe *pgconn.PgError
		if errors.As(err, &pe) && (pe.Code == "58P01" || pe.Code == "0A000" || pe.Code == "42710") {
			t.Skipf("the server lacks pg_trgm, or has it: %v", err)
		}
		if err != nil {
			return err
		}
		if _, err := s.ExecContext(ctx, "DROP EXTENSION pg_trgm"); err != nil {
			return err
		}
		if n, err := queryInt(ctx, s, loaded); err != nil || n == 0 {
			t.Skipf("the CREATE loaded no library here (%d settings, %v)", n, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	noLibraryNext(t, p, first, loaded)
}

// A change of session user that the classifier cannot see (a view's
// set_config) is reported by the server, and the session is reset.
func TestReportedParameterForcesReset(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE ROLE "+env.Schema()+"_r NOLOGIN")
	t.Cleanup(func() { env.Admin().Exec("DROP ROLE " + env.Schema() + "_r") })
	mustExec(t, env.Admin(), "CREATE VIEW "+env.Schema()+".become AS SELECT set_config('session_authorization', '"+env.Schema()+"_r', false) AS r")
	p := onePool(t, env, dbctx.Options{})
	ctx := context.Background()
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		var r string
		return s.QueryRowContext(ctx, "SELECT r FROM become").Scan(&r)
	}); err != nil {
		t.Fatal(err)
	}
	var same bool
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT current_user = session_user").Scan(&same)
	}); err != nil || !same {
		t.Fatalf("the next scope runs as another user (%v, %v)", same, err)
	}
	if st := p.Stats(); st.Resets != 1 {
		t.Fatalf("resets = %d, want 1", st.Resets)
	}
}

// What the server does not report and the statement's text does not name
// (a view that sets the tenant) is reset with ResetAlways.
func TestResetAlwaysCoversViews(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE VIEW "+env.Schema()+".tenant AS SELECT set_config('app.tenant', '42', false) AS t")
	p := onePool(t, env, dbctx.Options{ResetAlways: true})
	ctx := context.Background()
	var v sql.NullString
	for i, q := range []string{"SELECT t FROM tenant", "SELECT nullif(current_setting('app.tenant', true), '')"} {
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, q).Scan(&v)
		}); err != nil {
			t.Fatal(err)
		}
		if i == 1 && v.Valid {
			t.Fatalf("the next scope sees app.tenant = %q", v.String)
		}
	}
}

// Notifications that reached pgx for a channel the scope listened on, and
// that it never read, are not handed to the next scope.
func TestUnreadNotificationsDropped(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{})
	ctx := context.Background()
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.Pgx(ctx, func(c *pgx.Conn) error {
			if _, err := c.Exec(ctx, "LISTEN dbscope_ch"); err != nil {
				return err
			}
			// A session gets its own notifications, at its commit: pgx
			// has this one before Exec returns.
			_, err := c.Exec(ctx, "NOTIFY dbscope_ch, 'secret'")
			return err
		})
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.Pgx(ctx, func(c *pgx.Conn) error {
			done, cancel := context.WithCancel(ctx)
			cancel() // returns at once: a notification waiting, or an error
			if n, err := c.WaitForNotification(done); err == nil {
				t.Errorf("the next scope got the notification %q", n.Payload)
			}
			return nil
		})
	}); err != nil {
		t.Fatal(err)
	}
}

// What OnRelease itself sets is reset too.
func TestOnReleaseStateReset(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{
		OnRelease: func(ctx context.Context, c *sql.Conn) error {
			_, err := c.ExecContext(ctx, "SET app.x = 'from-release'")
			return err
		},
	})
	ctx := context.Background()
	var v sql.NullString
	for range 2 {
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, "SELECT nullif(current_setting('app.x', true), '')").Scan(&v)
		}); err != nil {
			t.Fatal(err)
		}
		if v.Valid {
			t.Fatalf("a scope sees app.x = %q", v.String)
		}
	}
}

// The sweep of statements PREPAREd in SQL, owed after code the lexer does
// not know (here an INSERT, whose triggers could PREPARE), is a check that
// rides with the next statement, in its round trip; only where the check
// finds such statements (a PREPARE left by the scope before) does the
// full sweep go, in a round trip more. PostgreSQL says what is left.
func TestSweepCheck(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "counts the round trips to the server")
	for _, mode := range []string{"cache_statement", "exec", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".log (id serial PRIMARY KEY, n int)")
			px := newProxy(t, env)
			p := countedPool(t, env, px, mode)
			ctx := context.Background()
			run := func(q string) {
				t.Helper()
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, q)
					return err
				}); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			// The next unit's lookup: its round trips, and what it sees.
			next := func() (trips int64, prepared int) {
				t.Helper()
				before := px.Trips()
				n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
					return queryInt(ctx, s, "SELECT count(*) FROM pg_prepared_statements WHERE from_sql AND name <> $1", "")
				})
				if err != nil {
					t.Fatal(err)
				}
				return px.Trips() - before, n
			}
			next() // warm: the lookup described and prepared
			run("INSERT INTO log (n) VALUES (1)")
			next() // the check and the reset's statements prepared
			run("INSERT INTO log (n) VALUES (2)")
			if trips, n := next(); trips != 1 || n != 0 {
				t.Errorf("after an INSERT: %d round trips, %d statements prepared in SQL; want 1, 0", trips, n)
			}
			run("PREPARE leftover AS SELECT 1")
			if trips, n := next(); trips != 2 || n != 0 {
				t.Errorf("after a PREPARE: %d round trips, %d statements prepared in SQL; want 2 (the check, then the sweep), 0", trips, n)
			}
			if st := p.Stats(); st.Resets != 3 {
				t.Errorf("%d resets, want 3", st.Resets)
			}
		})
	}
}

// noLibraryNext checks that the next scope of p, a pool of one
// connection, is on another backend than first and that loaded, a count
// of a library's settings, is 0 there.
func noLibraryNext(t *testing.T, p *dbctx.Pool, first int, loaded string) {
	t.Helper()
	var next, n int
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		if next, err = backendPID(ctx, s); err != nil {
			return err
		}
		n, err = queryInt(ctx, s, loaded)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if n != 0 || next == first {
		t.Errorf("the next scope (backend %d, first %d) sees the library's %d settings", next, first, n)
	}
}
