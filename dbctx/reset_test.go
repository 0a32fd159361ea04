package dbctx_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgserver"
)

type tenantKey struct{}

// 10,000 scopes alternate between two tenants on one physical connection;
// none may see the other's setting, whether set by the OnAcquire hook, a
// SET or set_config in user code.
func TestNoTenantLeak(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	db := env.Open(t)
	db.SetMaxOpenConns(1)
	p := poolOn(t, env, db, &dbctx.Options{
		MaxWorkers: 1,
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
			"SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'"},
		{"advisory lock", "SELECT pg_advisory_lock(42)",
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
			db := env.Open(t)
			db.SetMaxOpenConns(1)
			p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1})
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
			env := newEnv(t)
			dsn, err := pgserver.WithParams(env.DSN(), "default_query_exec_mode", mode)
			if err != nil {
				t.Fatal(err)
			}
			db := openDSN(t, dsn)
			db.SetMaxOpenConns(1)
			p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1})
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
			ctx := context.Background()
			err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
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
