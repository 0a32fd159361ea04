package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

var tenant = dbctx.NewSetting("app.tenant")

// rls makes env's schema a multi-tenant one, read by env's role, which is
// no longer a superuser (a superuser bypasses every policy): items and
// notes, each under a row-level-security policy on app.tenant forced on
// the tables' owner; tenants t1 to t5 have 10 items each, and notes takes
// what the tests write. copied has no policy (COPY FROM refuses one), and
// takes its tenant from app.tenant too.
func rls(t *testing.T, env *pgtest.Env) {
	t.Helper()
	sch, role := `"`+env.Schema()+`"`, `"`+env.Role()+`"`
	stmts := []string{"ALTER ROLE " + role + " NOSUPERUSER"}
	for _, table := range []string{"items", "notes"} {
		stmts = append(stmts,
			"CREATE TABLE "+sch+"."+table+" (id int PRIMARY KEY, tenant text NOT NULL DEFAULT current_setting('app.tenant'), name text NOT NULL)",
			"ALTER TABLE "+sch+"."+table+" OWNER TO "+role,
			"ALTER TABLE "+sch+"."+table+" ENABLE ROW LEVEL SECURITY",
			"ALTER TABLE "+sch+"."+table+" FORCE ROW LEVEL SECURITY",
			"CREATE POLICY tenant_rows ON "+sch+"."+table+" USING (tenant = current_setting('app.tenant', true)) WITH CHECK (tenant = current_setting('app.tenant', true))")
	}
	stmts = append(stmts,
		"CREATE TABLE "+sch+".copied (id int PRIMARY KEY, tenant text NOT NULL DEFAULT current_setting('app.tenant'), name text NOT NULL)",
		"ALTER TABLE "+sch+".copied OWNER TO "+role,
		"INSERT INTO "+sch+".items SELECT 100 * k + i, 't' || k, 'item-' || k || '-' || i FROM generate_series(1, 5) k, generate_series(1, 10) i")
	for _, q := range stmts {
		mustExec(t, env.Admin(), q)
	}
}

// seenSQL is what a statement sees: its app.tenant, and the items the
// policy lets it see.
const seenSQL = "SELECT coalesce(current_setting('app.tenant', true), ''), (SELECT count(*) FROM items)"

// seen is what a statement saw: app.tenant and the items visible.
type seen struct {
	tenant string
	items  int
}

// tenantPaths run one statement each through one way of reaching the
// database, and return what it saw. Those that write insert item id and
// read its tenant back as the admin (whom the policy does not bind).
var tenantPaths = map[string]func(t *testing.T, ctx context.Context, s *dbctx.Scope, env *pgtest.Env, id int) (seen, error){
	"QueryRowContext": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		err = s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
		return v, err
	},
	"QueryContext": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		rows, err := s.QueryContext(ctx, seenSQL)
		if err != nil {
			return v, err
		}
		defer rows.Close()
		for rows.Next() {
			err = rows.Scan(&v.tenant, &v.items)
		}
		return v, errors.Join(err, rows.Err())
	},
	"ExecContext": func(t *testing.T, ctx context.Context, s *dbctx.Scope, env *pgtest.Env, id int) (v seen, err error) {
		if _, err := s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'new')", id); err != nil {
			return v, err
		}
		return inserted(t, env, id), nil
	},
	"QueryRow (pgx)": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		err = s.QueryRow(ctx, seenSQL).Scan(&v.tenant, &v.items)
		return v, err
	},
	"Query (pgx)": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		rows, err := s.Query(ctx, seenSQL)
		if err != nil {
			return v, err
		}
		defer rows.Close()
		for rows.Next() {
			err = rows.Scan(&v.tenant, &v.items)
		}
		return v, errors.Join(err, rows.Err())
	},
	"Exec (pgx)": func(t *testing.T, ctx context.Context, s *dbctx.Scope, env *pgtest.Env, id int) (v seen, err error) {
		if _, err := s.Exec(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'new')", id); err != nil {
			return v, err
		}
		return inserted(t, env, id), nil
	},
	"SendBatch (pgx)": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		b := &pgx.Batch{}
		b.Queue("SELECT 1")
		b.Queue(seenSQL)
		br := s.SendBatch(ctx, b)
		if _, err := br.Exec(); err != nil {
			br.Close()
			return v, err
		}
		err = br.QueryRow().Scan(&v.tenant, &v.items)
		return v, errors.Join(err, br.Close())
	},
	"CopyFrom (pgx)": func(t *testing.T, ctx context.Context, s *dbctx.Scope, env *pgtest.Env, id int) (v seen, err error) {
		if _, err := s.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "name"}, pgx.CopyFromRows([][]any{{id, "copied"}})); err != nil {
			return v, err
		}
		return inserted(t, env, id), nil
	},
	"Atomic": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		err = dbctx.Atomic(ctx, func(ctx context.Context) error {
			return s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
		})
		return v, err
	},
	"Atomic, second statement": func(t *testing.T, ctx context.Context, s *dbctx.Scope, env *pgtest.Env, id int) (v seen, err error) {
		err = dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'new')", id); err != nil {
				return err
			}
			return s.QueryRow(ctx, seenSQL).Scan(&v.tenant, &v.items)
		})
		if err == nil && inserted(t, env, id).tenant != v.tenant {
			return v, fmt.Errorf("the insert saw %q, the query %q", inserted(t, env, id).tenant, v.tenant)
		}
		return v, err
	},
	"Atomic, nested": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		err = dbctx.Atomic(ctx, func(ctx context.Context) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				return s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
			})
		})
		return v, err
	},
	"BeginTx": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		tx, err := s.BeginTx(ctx, nil)
		if err != nil {
			return v, err
		}
		defer tx.Rollback()
		err = tx.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
		return v, err
	},
	"BeginTx, then the scope": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		tx, err := s.BeginTx(ctx, nil)
		if err != nil {
			return v, err
		}
		defer tx.Rollback()
		err = s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
		return v, err
	},
	"Do, nested": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		err = dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
		})
		return v, err
	},
	"Conn": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		c, err := s.Conn(ctx)
		if err != nil {
			return v, err
		}
		err = c.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
		return v, err
	},
	"Pgx": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		err = s.Pgx(ctx, func(c *pgx.Conn) error {
			return c.QueryRow(ctx, seenSQL).Scan(&v.tenant, &v.items)
		})
		return v, err
	},
	"PrepareContext": func(t *testing.T, ctx context.Context, s *dbctx.Scope, _ *pgtest.Env, _ int) (v seen, err error) {
		st, err := s.PrepareContext(ctx, seenSQL)
		if err != nil {
			return v, err
		}
		err = st.QueryRowContext(ctx).Scan(&v.tenant, &v.items)
		return v, err
	},
	"several statements in one string": func(t *testing.T, ctx context.Context, s *dbctx.Scope, env *pgtest.Env, id int) (v seen, err error) {
		if _, err := s.ExecContext(ctx, fmt.Sprintf("SELECT 1; INSERT INTO notes (id, name) VALUES (%d, 'new')", id)); err != nil {
			return v, err
		}
		return inserted(t, env, id), nil
	},
}

// inserted returns the tenant of the note or copied row id as the admin
// reads it, and whether it exists.
func inserted(t *testing.T, env *pgtest.Env, id int) seen {
	t.Helper()
	var v seen
	sch := `"` + env.Schema() + `"`
	err := env.Admin().QueryRow("SELECT tenant, 1 FROM (SELECT id, tenant FROM "+sch+".notes UNION ALL SELECT id, tenant FROM "+sch+".copied) w WHERE id = $1", id).Scan(&v.tenant, &v.items)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		t.Fatal(err)
	}
	return v
}

// the ids a writing path inserts, one per run.
var nextID = struct {
	sync.Mutex
	n int
}{n: 10000}

func newID() int {
	nextID.Lock()
	defer nextID.Unlock()
	nextID.n++
	return nextID.n
}

// Every statement of a unit of work runs with exactly the settings its
// context declares, on every path, and the next unit on the same
// connection sees its own or none: PostgreSQL's policy says which items
// each statement saw, and current_setting what it ran with. On one
// connection, in every exec mode of pgx, each path runs after a unit of
// another tenant and before one of none.
func TestSettingsEveryPath(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol", "cache_describe", "describe_exec", "another driver"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			rls(t, env)
			var p *dbctx.Pool
			if mode == "another driver" {
				// One that wraps pgx's, as instrumenting drivers do:
				// database/sql's paths, a round trip per setting.
				db := env.OpenWrapped(t)
				db.SetMaxOpenConns(1)
				p = poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
			} else {
				p = onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
			}
			for name, path := range tenantPaths {
				if mode == "another driver" && (name == "Pgx" || name == "Atomic, second statement" || strings.HasSuffix(name, "(pgx)")) {
					continue // pgx's own interface: ErrNotPgx
				}
				id := newID()
				other := tenant.With(context.Background(), "t2")
				if v := see(t, p, other); v != (seen{"t2", 10}) {
					t.Fatalf("%s: the unit before sees %+v", name, v)
				}
				var got seen
				err := p.Do(tenant.With(context.Background(), "t1"), func(ctx context.Context, s *dbctx.Scope) error {
					var err error
					got, err = path(t, ctx, s, env, id)
					return err
				})
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				want := seen{"t1", 10}
				if got.items == 1 { // a write: its row, read back
					want.items = 1
				}
				if got != want {
					t.Errorf("%s: the statement saw %+v, want %+v", name, got, want)
				}
				if v := see(t, p, context.Background()); v != (seen{"", 0}) {
					t.Errorf("%s: the next unit, which declares no tenant, sees %+v", name, v)
				}
			}
		})
	}
}

// see runs one unit of work of p with ctx and returns what it saw.
func see(t *testing.T, p *dbctx.Pool, ctx context.Context) seen {
	t.Helper()
	var v seen
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
	}); err != nil {
		t.Fatal(err)
	}
	return v
}

// A pool that does not declare TransactionPooling, behind a PgBouncer in
// transaction mode: its first connection finds the pooler (checkPooler),
// says so once at Error, and from then on applies the settings per
// transaction, as it would with TransactionPooling, rather than for a
// session that the pooler hands to other clients. Two tenants in turn on
// several goroutines, over fewer server connections than clients: every
// statement reads its own tenant's rows.
func TestSettingsBehindUndeclaredPooler(t *testing.T) {
	t.Parallel()
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 2})
	env := newEnv(t)
	rls(t, env)
	db := openDSN(t, b.DSN(env, "default_query_exec_mode", "exec"))
	logs, logger := dbtest.NewLogs()
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 4, Logger: logger})
	var wrong atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				want := []string{"t1", "t2"}[(g+i)%2]
				err := p.Do(tenant.With(context.Background(), want), func(ctx context.Context, s *dbctx.Scope) error {
					var v seen
					if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
						return err
					}
					if v != (seen{want, 10}) {
						wrong.Add(1)
					}
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if n := wrong.Load(); n > 0 {
		t.Errorf("%d of 200 statements saw another tenant, or none", n)
	}
	// Units that declare none see none: no session kept a tenant, not
	// even those of the first units, which took their connections while
	// the first one's check ran (they wait for its answer).
	for range 20 {
		if v := see(t, p, context.Background()); v != (seen{"", 0}) {
			t.Fatalf("a unit that declares no tenant sees %+v", v)
		}
	}
	if n := logs.Count(slog.LevelError, "dbctx: the server's backend is not the one"); n != 1 {
		t.Errorf("the pooler was told of %d times at Error, want once", n)
	}
}

// Behind PgBouncer in transaction mode the same declaration holds with no
// session state: outside a transaction the settings go, transaction-local,
// into the statement's implicit transaction; in one, with its BEGIN. What
// cannot share the statement's transaction outside one (raw access,
// several statements in one string) is refused, saying to use Atomic;
// COPY gets a transaction of its own.
func TestSettingsBehindPgBouncer(t *testing.T) {
	t.Parallel()
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 2})
	env := newEnv(t)
	rls(t, env)
	for _, mode := range []string{"exec", "simple_protocol", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			db := openDSN(t, b.DSN(env, "default_query_exec_mode", mode))
			p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 3, TransactionPooling: true, Logger: quiet()})
			refused := map[string]bool{"Conn": true, "Pgx": true, "PrepareContext": true, "several statements in one string": true}
			for name, path := range tenantPaths {
				id := newID()
				var got seen
				err := p.Do(tenant.With(context.Background(), "t3"), func(ctx context.Context, s *dbctx.Scope) error {
					var err error
					got, err = path(t, ctx, s, env, id)
					return err
				})
				if refused[name] {
					if !errors.Is(err, dbctx.ErrSessionState) {
						t.Errorf("%s: %v, want ErrSessionState", name, err)
					}
					continue
				}
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				want := seen{"t3", 10}
				if got.items == 1 {
					want.items = 1
				}
				if got != want {
					t.Errorf("%s: the statement saw %+v, want %+v", name, got, want)
				}
			}
			// Inside Atomic raw access gets them, transaction-local.
			err := p.Do(tenant.With(context.Background(), "t4"), func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					return s.Pgx(ctx, func(c *pgx.Conn) error {
						var v seen
						if err := c.QueryRow(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
							return err
						}
						if v != (seen{"t4", 10}) {
							return fmt.Errorf("raw access inside Atomic saw %+v", v)
						}
						return nil
					})
				})
			})
			if err != nil {
				t.Error(err)
			}
			// Units without a tenant see none, whichever server
			// connection PgBouncer gives them.
			for range 6 {
				if v := see(t, p, context.Background()); v != (seen{"", 0}) {
					t.Fatalf("a unit that declares no tenant sees %+v", v)
				}
			}
		})
	}
}

// Settings cost no round trip of their own: a unit of work of one lookup
// takes as many round trips (ReadyForQuery messages, counted by a proxy)
// with a tenant that changes at every unit as without any, in every exec
// mode, and no reset.
func TestSettingsNoRoundTrip(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "counts the round trips to the server")
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			rls(t, env)
			px := newProxy(t, env)
			p := countedPool(t, env, px, mode)
			lookup := func(ctx context.Context) {
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					var name string
					return s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", 101).Scan(&name)
				}); err != nil && !errors.Is(err, sql.ErrNoRows) {
					t.Fatal(err)
				}
			}
			tenants := []string{"t1", "t2", "t3"}
			// Warm up: statements described and prepared on the
			// connection, as a running service has them.
			lookup(context.Background())
			lookup(tenant.With(context.Background(), "t1"))
			count := func(withTenant bool) int64 {
				before := px.Ready()
				for i := range 12 {
					ctx := context.Background()
					if withTenant {
						ctx = tenant.With(ctx, tenants[i%len(tenants)])
					}
					lookup(ctx)
				}
				return px.Ready() - before
			}
			resets := p.Stats().Resets
			plain := count(false)
			applied := p.Stats().Settings
			tenanted := count(true)
			if n := p.Stats().Settings - applied; n != 12 {
				t.Errorf("Stats.Settings: %d round trips applied settings, want 12 (a tenant changing at every unit on one connection)", n)
			}
			if tenanted != plain {
				t.Errorf("12 lookups: %d round trips with a tenant changing at every unit, %d without", tenanted, plain)
			}
			if plain != 12 {
				t.Errorf("12 lookups took %d round trips", plain)
			}
			if n := p.Stats().Resets - resets; n != 0 {
				t.Errorf("%d resets, want none: settings make no scope dirty", n)
			}
		})
	}
}

// A setting that fails to apply fails the statement, which does not run;
// a value that cannot be sent is refused before anything is sent.
func TestSettingsFailure(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	rls(t, env)
	p := poolOn(t, env, env.Open(t), &dbctx.Options{MaxWorkers: 1, Logger: quiet(), TransactionPooling: pgtest.Pooled()})
	timeout := dbctx.NewSetting("statement_timeout")
	id := newID()
	ctx := timeout.With(tenant.With(context.Background(), "t1"), "not a duration")
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'x')", id)
		return err
	})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "22023" {
		t.Fatalf("got %v, want the server's invalid_parameter_value", err)
	}
	if v := inserted(t, env, id); v.items != 0 {
		t.Fatalf("the statement ran: %+v", v)
	}
	err = p.Do(tenant.With(context.Background(), "t1\x00t2"), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'x')", id)
		return err
	})
	if !errors.Is(err, dbctx.ErrSettingValue) || !strings.Contains(err.Error(), "app.tenant") {
		t.Fatalf("got %v, want ErrSettingValue naming the setting", err)
	}
	if v := inserted(t, env, id); v.items != 0 {
		t.Fatalf("the statement ran: %+v", v)
	}
	// The pool goes on.
	if v := see(t, p, tenant.With(context.Background(), "t5")); v != (seen{"t5", 10}) {
		t.Fatalf("after the failures: %+v", v)
	}
}

// The statements of a *sql.Tx of BeginTx, or of a *sql.Stmt of
// PrepareContext, are not the scope's to see: one may set app.tenant, or
// roll back to a savepoint taken before the scope's statement applied its
// own, at any time. Every statement of the scope still runs with its
// context's tenant, and reads that tenant's rows.
func TestSettingsBesideHandedOutStatements(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		env := newEnv(t)
		rls(t, env)
		p := poolOn(t, env, openWith(t, env, drv), &dbctx.Options{MaxWorkers: 1, Logger: quiet(), TransactionPooling: pgtest.Pooled()})
		check := func(ctx context.Context, s *dbctx.Scope, when string) error {
			var v seen
			if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
				return fmt.Errorf("%s: %w", when, err)
			}
			if v != (seen{"t1", 10}) {
				return fmt.Errorf("%s: a statement of tenant t1 saw %+v", when, v)
			}
			return nil
		}
		err := p.Do(tenant.With(context.Background(), "t2"), func(ctx context.Context, s *dbctx.Scope) error {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "SAVEPOINT sp"); err != nil {
				return err
			}
			t1 := tenant.With(ctx, "t1")
			if err := check(t1, s, "in the transaction"); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT sp"); err != nil {
				return err
			}
			if err := check(t1, s, "after ROLLBACK TO SAVEPOINT"); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "SET LOCAL app.tenant = 't3'"); err != nil {
				return err
			}
			return check(t1, s, "after the transaction's SET LOCAL")
		})
		if err != nil {
			t.Error(err)
		}
		if pgtest.Pooled() {
			return // PrepareContext is refused there
		}
		err = p.Do(tenant.With(context.Background(), "t1"), func(ctx context.Context, s *dbctx.Scope) error {
			st, err := s.PrepareContext(ctx, "SELECT set_config('app.tenant', 't2', false)")
			if err != nil {
				return err
			}
			if err := check(ctx, s, "first"); err != nil {
				return err
			}
			if _, err := st.ExecContext(ctx); err != nil {
				return err
			}
			return check(ctx, s, "after the *sql.Stmt's set_config")
		})
		if err != nil {
			t.Error(err)
		}
	})
}

// Names are checked once, when the setting is declared.
func TestNewSettingChecksNames(t *testing.T) {
	for _, name := range []string{"", "app.", ".x", "app tenant", "app.ten-ant", "1app.x", "app.x;drop", "session_authorization", "transaction_isolation", `app."x"`,
		"default_transaction_read_only", "Default_Transaction_Isolation", "default_transaction_deferrable", "client_encoding", "seed", "transform_null_equals", "Standard_Conforming_Strings",
		"plpgsql.tenant", "PLpgSQL.Tenant", "pg_stat_statements.tenant", "auto_explain.x.y"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewSetting(%q) did not panic", name)
				}
			}()
			dbctx.NewSetting(name)
		}()
	}
	for _, name := range []string{"app.tenant", "App.Tenant_2", "statement_timeout", "search_path", "role", "a.b.c", "plpgsql.variable_conflict", "pg_trgm.similarity_threshold", "plpgsqlx.tenant"} {
		if st := dbctx.NewSetting(name); st.Name() != strings.ToLower(name) {
			t.Errorf("NewSetting(%q).Name() = %q", name, st.Name())
		}
	}
	ctx := tenant.With(tenant.With(context.Background(), "a"), "b")
	if v, ok := tenant.Value(ctx); !ok || v != "b" {
		t.Errorf("the later With: %q, %v", v, ok)
	}
}

// PostgreSQL's old names of parameters (sort_mem, vacuum_mem) name the
// same parameter as the new: declared under either, the next unit's
// declaration of the other is not undone by the reset of the first (a
// unit declaring work_mem after one declaring sort_mem ran with the
// default).
func TestSettingOldNames(t *testing.T) {
	t.Parallel()
	if n := dbctx.NewSetting("Sort_Mem").Name(); n != "work_mem" {
		t.Errorf("NewSetting(Sort_Mem).Name() = %q, want work_mem", n)
	}
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	sortMem, workMem := dbctx.NewSetting("sort_mem"), dbctx.NewSetting("work_mem")
	show := func(ctx context.Context) string {
		var v string
		if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, "SHOW work_mem").Scan(&v)
		}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	bg := context.Background()
	def := show(bg)
	for _, step := range []struct {
		ctx  context.Context
		want string
	}{
		{sortMem.With(bg, "64MB"), "64MB"},
		{workMem.With(bg, "8MB"), "8MB"},
		{sortMem.With(bg, "16MB"), "16MB"},
		{bg, def},
	} {
		if got := show(step.ctx); got != step.want {
			t.Errorf("work_mem %s, want %s", got, step.want)
		}
	}
}

// Many tenants at once on two connections: every statement sees its own
// tenant's items and no other's.
func TestSettingsConcurrentTenants(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	rls(t, env)
	// Behind the CI's PgBouncer, declared as one must.
	p := poolOn(t, env, env.Open(t), &dbctx.Options{MaxWorkers: 2, WaitTimeout: time.Minute, TransactionPooling: pgtest.Pooled()})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 40 {
				want := fmt.Sprintf("t%d", 1+(g+i)%5)
				ctx := tenant.With(context.Background(), want)
				var got string
				var foreign, own int
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					return s.QueryRowContext(ctx, `SELECT current_setting('app.tenant', true),
						count(*) FILTER (WHERE tenant <> current_setting('app.tenant', true)), count(*) FROM items`).Scan(&got, &foreign, &own)
				})
				switch {
				case err != nil:
					errs <- err
					return
				case got != want || foreign != 0 || own != 10:
					errs <- fmt.Errorf("tenant %s saw tenant %q, %d rows of others, %d in all", want, got, foreign, own)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := p.Stats(); st.Resets != 0 {
		t.Errorf("%d resets: settings must make no scope dirty", st.Resets)
	}
}

// A backend killed while idle costs the next statement nothing, and it
// still runs with its tenant; one killed under the first statement of a
// unit runs it again, with its tenant, on a fresh connection; one killed
// after the unit ran something fails it with ErrSessionLost.
func TestSettingsAcrossKills(t *testing.T) {
	t.Parallel()
	forDrivers(t, testSettingsAcrossKills)
}

func testSettingsAcrossKills(t *testing.T, drv string) {
	pgtest.SkipPooled(t, "kills server backends")
	env := newEnv(t)
	rls(t, env)
	p := poolOn(t, env, openWith(t, env, drv), &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	p.SetRecent(time.Hour) // the kept connection is not looked at: the retry must do it
	ctx := tenant.With(context.Background(), "t2")
	if v := see(t, p, ctx); v != (seen{"t2", 10}) {
		t.Fatalf("before: %+v", v)
	}
	env.Terminate(t)
	if v := see(t, p, tenant.With(context.Background(), "t3")); v != (seen{"t3", 10}) {
		t.Fatalf("after an idle kill: %+v", v)
	}
	pid := backendOf(t, p)
	killed := dbtest.KillWhenActive(t, env, "SELECT pg_sleep")
	var v seen
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT pg_sleep(CASE WHEN pg_backend_pid() = $1 THEN 30 ELSE 0 END)::text, current_setting('app.tenant', true), (SELECT count(*) FROM items)",
			pid).Scan(new(string), &v.tenant, &v.items)
	})
	if n := <-killed; n != 1 {
		t.Fatalf("killed %d backends, want 1", n)
	}
	if err != nil || v != (seen{"t2", 10}) {
		t.Fatalf("killed under the first statement: %+v, %v; want it run again with its tenant", v, err)
	}
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
			return err
		}
		env.Terminate(t)
		return s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
	})
	if !errors.Is(err, dbctx.ErrSessionLost) {
		t.Fatalf("killed after a statement: %v, want ErrSessionLost", err)
	}
}

// backendOf returns the pid of the one connection p keeps.
func backendOf(t *testing.T, p *dbctx.Pool) int {
	t.Helper()
	var pid int
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		pid, err = backendPID(ctx, s)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return pid
}

// A connection that goes back to the *sql.DB carrying settings dbscope
// applied is cleared first: code using the *sql.DB directly sees none.
func TestSettingsClearedForTheDB(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs the *sql.DB's next user to get the same server session")
	env := newEnv(t)
	rls(t, env)
	db := env.Open(t)
	db.SetMaxOpenConns(1)
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1})
	if v := see(t, p, tenant.With(context.Background(), "t1")); v != (seen{"t1", 10}) {
		t.Fatalf("the scope saw %+v", v)
	}
	// The pool keeps the connection for its next scope a moment, then
	// gives it back; db waits for it.
	var v seen
	if err := db.QueryRow(seenSQL).Scan(&v.tenant, &v.items); err != nil || v != (seen{"", 0}) {
		t.Fatalf("the *sql.DB's next user sees %+v (%v), want no tenant", v, err)
	}
}

// A pgx.QueryRewriter makes the text that runs differ from the text the
// classifier reads: the statement counts as unseen, and the session is
// reset after it. pgx's named arguments, which only number the
// placeholders, do not.
func TestQueryRewriterUnseen(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{})
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.Exec(ctx, "SELECT 1", sneaky{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var v string
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.x', true), '')").Scan(&v)
	}); err != nil || v != "" {
		t.Fatalf("after a rewritten statement the next scope sees app.x = %q (%v)", v, err)
	}
	before := p.Stats().Resets
	for _, api := range []string{"pgx", "database/sql"} {
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			if api == "pgx" {
				return s.QueryRow(ctx, "SELECT @n::int", pgx.NamedArgs{"n": 7}).Scan(&n)
			}
			return s.QueryRowContext(ctx, "SELECT @n::int", pgx.NamedArgs{"n": 7}).Scan(&n)
		})
		if err != nil {
			t.Fatalf("%s with named arguments: %v", api, err)
		}
	}
	if n := p.Stats().Resets - before; n != 0 {
		t.Fatalf("named arguments cost %d resets", n)
	}
}

// sneaky rewrites whatever it is given into a statement that sets a
// setting.
type sneaky struct{}

func (sneaky) RewriteQuery(context.Context, *pgx.Conn, string, []any) (string, []any, error) {
	return "SELECT set_config('app.x', 'leaked', false)", nil, nil
}

// SET TRANSACTION must be the first statement of its transaction: inside
// Atomic, and after a BEGIN in raw SQL, the settings go with the statement
// after it, which runs at that isolation level with its tenant.
func TestSettingsAndSetTransaction(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	rls(t, env)
	p := poolOn(t, env, env.Open(t), &dbctx.Options{MaxWorkers: 1, TransactionPooling: pgtest.Pooled()})
	ctx := tenant.With(context.Background(), "t2")
	check := func(s *dbctx.Scope, ctx context.Context) error {
		var iso string
		var v seen
		if err := s.QueryRowContext(ctx, "SELECT current_setting('transaction_isolation'), current_setting('app.tenant', true), (SELECT count(*) FROM items)").Scan(&iso, &v.tenant, &v.items); err != nil {
			return err
		}
		if iso != "serializable" || v != (seen{"t2", 10}) {
			return fmt.Errorf("isolation %s, saw %+v", iso, v)
		}
		return nil
	}
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"); err != nil {
				return err
			}
			return check(s, ctx)
		})
	})
	if err != nil {
		t.Errorf("Atomic: %v", err)
	}
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		for _, q := range []string{"BEGIN", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"} {
			if _, err := s.ExecContext(ctx, q); err != nil {
				return err
			}
		}
		if err := check(s, ctx); err != nil {
			return err
		}
		_, err := s.ExecContext(ctx, "COMMIT")
		return err
	})
	if err != nil {
		t.Errorf("BEGIN in SQL: %v", err)
	}
}

// A search_path in the connection string (a parameter, or -c in options)
// that puts pg_catalog after the user's schema makes the user's functions
// overload the built-ins a statement names: lower('A') ran the schema's
// lower, which set a setting the next unit of work found on the
// connection. Every statement then counts as code, and the pool says so
// once.
func TestSearchPathInConnectionString(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "PgBouncer refuses search_path in the connection string")
	env := newEnv(t)
	sc := env.Schema()
	mustExec(t, env.Admin(), "CREATE FUNCTION "+sc+".lower(text) RETURNS text LANGUAGE sql AS "+
		"$$ SELECT set_config('app.leak', 'leaked', false) || pg_catalog.lower($1) $$")
	for _, kv := range [][2]string{
		{"search_path", sc + ",pg_catalog"},
		{"options", "-csearch_path=" + sc + ",pg_catalog"},
		{"options", "--search-path=" + sc + ",pg_catalog"},
		{"SEARCH_PATH", sc + ",pg_catalog"},
	} {
		dsn, err := pgserver.WithParams(env.DSN(), kv[0], kv[1])
		if err != nil {
			t.Fatal(err)
		}
		logs, logger := dbtest.NewLogs()
		db := openDSN(t, dsn)
		db.SetMaxOpenConns(1)
		p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: logger})
		var got string
		for i, q := range []string{"SELECT lower('A')", "SELECT coalesce(current_setting('app.leak', true), '')"} {
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				return s.QueryRowContext(ctx, q).Scan(&got)
			}); err != nil {
				t.Fatal(err)
			}
			if i == 0 && got != "leakeda" {
				t.Fatalf("%s: %q, want the schema's lower (the test's premise)", kv, got)
			}
		}
		if got != "" {
			t.Errorf("%s=%s: the next unit of work sees app.leak %q", kv[0], kv[1], got)
		}
		if logs.Count(slog.LevelWarn, "dbctx: the connection string's search_path") != 1 {
			t.Errorf("%s=%s: not logged once: %s", kv[0], kv[1], logs)
		}
	}
}

func TestStartupSearchPaths(t *testing.T) {
	for _, tc := range []struct {
		params map[string]string
		want   []string
	}{
		{map[string]string{"search_path": "a,pg_catalog"}, []string{"a,pg_catalog"}},
		{map[string]string{"options": "-c search_path=a,pg_catalog -c work_mem=1MB"}, []string{"a,pg_catalog"}},
		{map[string]string{"options": `-cstatement_timeout=0  --search_path=a,\ pg_catalog`}, []string{"a, pg_catalog"}},
		{map[string]string{"options": "-c Search-Path=x"}, []string{"x"}},
		{map[string]string{"options": "-c search_path_x=y -c"}, nil},
		{map[string]string{"application_name": "x"}, nil},
		{map[string]string{"Search_Path": "a,pg_catalog"}, []string{"a,pg_catalog"}},
		{map[string]string{"OPTIONS": "-c search_path=b"}, []string{"b"}},
	} {
		if got := dbctx.StartupSearchPaths(tc.params); !slices.Equal(got, tc.want) {
			t.Errorf("startupSearchPaths(%v) = %q, want %q", tc.params, got, tc.want)
		}
	}
}

// The pooler check does not hold other units: behind a PgBouncer whose
// one server connection another client holds (a transaction left open),
// the first unit's check waits for it, and units with short deadlines
// meanwhile end at their deadlines, not after the check.
func TestPoolerCheckHoldsNoOne(t *testing.T) {
	t.Parallel()
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 1})
	env := newEnv(t)
	dsn := b.DSN(env, "default_query_exec_mode", "exec")
	hog := openDSN(t, dsn)
	hold, err := hog.Begin() // the pooler's one server connection, until Rollback
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hold.Exec("SELECT 1"); err != nil {
		t.Fatal(err)
	}
	p := poolOn(t, env, openDSN(t, dsn), &dbctx.Options{MaxWorkers: 4, Logger: quiet()})
	first := make(chan error, 1)
	go func() {
		first <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT 1")
			return err
		})
	}()
	eventually(t, "the first unit's check to wait", func() bool { return p.Stats().InUse == 1 && p.Stats().Pinned == 0 })
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			})
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("a unit with a deadline, the pooler busy: %v, want DeadlineExceeded", err)
			}
			// Not a speed bound: held behind the first unit's check,
			// it would end only when that check gives up (5s).
			if d := time.Since(start); d > 4*time.Second {
				t.Errorf("a unit with a 500ms deadline ended after %v", d)
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case err := <-first:
		t.Fatalf("the first unit ended (%v) before the others, while the server connection was held", err)
	}
	if err := hold.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil {
		t.Fatalf("the first unit: %v", err)
	}
}

// BeginTx and raw access (Conn, Pgx), whose statements the scope does not
// send, apply the settings in one round trip of their own (README,
// "Tenancy"), also with the same tenant at every unit: the connection
// they leave is reset (BeginTx) or discarded (raw access), so the next
// unit's does not carry it. Every other path of tenantPaths costs none.
func TestSettingsRoundTripsOfHandedOut(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "counts the round trips to the server")
	env := newEnv(t)
	rls(t, env)
	px := newProxy(t, env)
	p := countedPool(t, env, px, "exec")
	for name, path := range tenantPaths {
		run := func(ctx context.Context) {
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := path(t, ctx, s, env, newID())
				return err
			}); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
		}
		count := func(tenants ...string) int64 {
			before := px.Ready()
			for i := range 6 {
				ctx := context.Background()
				if len(tenants) > 0 {
					ctx = tenant.With(ctx, tenants[i%len(tenants)])
				}
				run(ctx)
			}
			return px.Ready() - before
		}
		// Warm up: statements described, app.tenant known to the session
		// (the writes' DEFAULT reads it).
		run(tenant.With(context.Background(), "t1"))
		count()
		count("t1", "t2", "t3")
		count("t1")
		plain, switching, carried := count(), count("t1", "t2", "t3"), count("t1")
		want := int64(0)
		switch name {
		case "BeginTx", "BeginTx, then the scope", "Conn", "Pgx":
			want = 6
		}
		if switching-plain != want || carried-plain > want {
			t.Errorf("%s: 6 units: %d round trips without a tenant, %d with one switching at every unit (want %d more), %d with one the connection carries", name, plain, switching, want, carried)
		}
	}
}
