package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// The context of a BeginTx that ends while the scope goes on: the
// transaction is rolled back (PostgreSQL has none of its rows), by the
// scope, between its statements, where database/sql would roll it back
// on a goroutine of its own and pgx, failing that rollback under the dead
// context, would close the connection under the scope. The scope's
// statements go on succeeding, on the same backend, and -race sees
// nothing.
func TestBeginTxContextEnds(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "asks for the backend of consecutive statements, which a pooler may change")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	for i := range 20 {
		noHang(t, "BeginTx", func() {
			ctx, scope := p.Scope(context.Background())
			defer scope.End()
			var pid, other int
			if err := scope.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			tctx, cancel := context.WithCancel(ctx)
			tx, err := scope.BeginTx(tctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(tctx, "INSERT INTO t VALUES ($1)", i); err != nil {
				t.Fatal(err)
			}
			cancel()
			// Until the transaction is over, the scope's statements run
			// in it; then on their own, on the same backend.
			deadline := time.Now().Add(time.Minute)
			for {
				var own bool
				// The transaction's INSERT took an xid: a statement in it sees it.
				err := scope.QueryRowContext(ctx, "SELECT pg_backend_pid(), pg_current_xact_id_if_assigned() IS NULL").Scan(&other, &own)
				if err != nil {
					t.Fatalf("a statement of the scope after BeginTx's context ended: %v", err)
				}
				if other != pid {
					t.Fatalf("backend %d, then %d: the connection was lost", pid, other)
				}
				if own {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the transaction of a BeginTx whose context ended is still open after a minute")
				}
			}
			if err := tx.Commit(); err == nil {
				t.Fatal("Commit after BeginTx's context ended: nil, want an error")
			}
		})
	}
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows committed (%v), want 0", n, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Do(context.Background(), func(_ context.Context, s *dbctx.Scope) error {
		_, err := s.BeginTx(ctx, nil)
		return err
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("BeginTx with its context ended: %v, want context.Canceled", err)
	}
}

// Rows that a boundary closes before they were read to the end say so:
// Next stops and Err reports it, where it reported nothing (rows cut
// short read as rows exhausted); and their column names are those of
// their own statement, not of the next one the connection ran.
func TestRowsCutByBoundary(t *testing.T) {
	t.Parallel()
	forDrivers(t, testRowsCutByBoundary)
}

func testRowsCutByBoundary(t *testing.T, drv string) {
	p, _ := newPoolWith(t, drv, nil)
	const q = "SELECT n FROM generate_series(1, 1000) n"
	type rowsLike interface {
		Next() bool
		Err() error
	}
	for name, open := range map[string]func(ctx context.Context, s *dbctx.Scope) (rowsLike, func() []string, error){
		"QueryContext": func(ctx context.Context, s *dbctx.Scope) (rowsLike, func() []string, error) {
			rows, err := s.QueryContext(ctx, q)
			if err != nil {
				return nil, nil, err
			}
			return rows, func() []string { c, _ := rows.Columns(); return c }, nil
		},
		"Query": func(ctx context.Context, s *dbctx.Scope) (rowsLike, func() []string, error) {
			rows, err := s.Query(ctx, q)
			if err != nil {
				return nil, nil, err
			}
			return rows, func() []string {
				var c []string
				for _, fd := range rows.FieldDescriptions() {
					c = append(c, fd.Name)
				}
				return c
			}, nil
		},
	} {
		if drv == otherDriver && name == "Query" {
			continue // pgx's own interface
		}
		ctx, scope := p.Scope(context.Background())
		rows, columns, err := open(ctx, scope)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		if name == "Query" {
			// database/sql asks for the columns at the first Next: not
			// before the boundary for QueryContext.
			if !rows.Next() {
				t.Fatalf("%s: no first row: %v", name, rows.Err())
			}
			n++
		}
		if err := dbctx.CloseOld(ctx); err != nil {
			t.Fatal(err)
		}
		var one int
		if err := scope.QueryRowContext(ctx, "SELECT 1 AS other").Scan(&one); err != nil {
			t.Fatal(err)
		}
		if name == "QueryContext" {
			if c := columns(); !slices.Equal(c, []string{"n"}) {
				t.Errorf("%s: columns %q after the boundary, want [n]", name, c)
			}
		}
		for rows.Next() {
			n++
		}
		if err := rows.Err(); err == nil {
			t.Errorf("%s: %d of 1000 rows, then Next false and Err nil: rows cut short read as exhausted", name, n)
		}
		scope.End()
	}
}

// On another driver than pgx's the scope's rows are its own too: while
// they are open a statement of the scope fails with ErrConnBusy rather
// than reach the driver's connection under them (database/sql would let
// it), and they convert values as the driver does. Where the scope has
// handed out a *sql.Tx, whose statements it cannot hold back, they are
// read before QueryContext returns. QueryRowContext's row holds nothing.
func TestRowsOtherDriver(t *testing.T) {
	t.Parallel()
	p, _ := newPoolWith(t, otherDriver, &dbctx.Options{MaxWorkers: 1})
	ctx, scope := p.Scope(context.Background())
	defer scope.End()
	const q = "SELECT g, 'x' || g AS s, NULLIF(g, 2) AS n, now() AS t, '\\x0102'::bytea AS b FROM generate_series(1, 3) g"
	rows, err := scope.QueryContext(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error)
	noHang(t, "a statement while rows are open", func() {
		go func() {
			_, err := queryInt(ctx, scope, "SELECT 1")
			done <- err
		}()
		if err := <-done; !errors.Is(err, dbctx.ErrConnBusy) {
			t.Errorf("rows open, another goroutine's statement: %v, want ErrConnBusy", err)
		}
	})
	cts, err := rows.ColumnTypes()
	if err != nil || len(cts) != 5 || cts[0].DatabaseTypeName() != "INT4" || cts[4].DatabaseTypeName() != "BYTEA" {
		t.Errorf("column types %v, %v", cts, err)
	}
	var got []string
	for rows.Next() {
		var g int
		var s string
		var n sql.NullInt64
		var tm time.Time
		var b []byte
		if err := rows.Scan(&g, &s, &n, &tm, &b); err != nil {
			t.Fatal(err)
		}
		if tm.IsZero() {
			t.Error("no time")
		}
		got = append(got, fmt.Sprintf("%d %s %v %x", g, s, n, b))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"1 x1 {1 true} 0102", "2 x2 {0 false} 0102", "3 x3 {3 true} 0102"}; !slices.Equal(got, want) {
		t.Errorf("rows %q, want %q", got, want)
	}
	// Read to the end: the connection is free again, without Close.
	if n, err := queryInt(ctx, scope, "SELECT 2"); err != nil || n != 2 {
		t.Fatalf("after the rows: %d, %v", n, err)
	}
	var none int
	if err := scope.QueryRowContext(ctx, "SELECT 1 WHERE false").Scan(&none); !errors.Is(err, sql.ErrNoRows) {
		t.Errorf("QueryRowContext of no row: %v, want sql.ErrNoRows", err)
	}
	if err := scope.QueryRowContext(ctx, "SELECT 1 / (2 - g) FROM generate_series(1, 2) g").Scan(&none); err == nil {
		t.Error("QueryRowContext of a statement failing after its first row: no error")
	}
	// A *sql.Tx out: rows read at once, and the Tx's statements meanwhile
	// (on another goroutine) reach no rows under way.
	tx, err := scope.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	rows, err = scope.QueryContext(ctx, "SELECT g FROM generate_series(1, 100) g")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		_, err := tx.ExecContext(ctx, "SELECT 1")
		done <- err
	}()
	if err := <-done; err != nil {
		t.Errorf("the Tx's statement while the scope's rows are out: %v", err)
	}
	n := 0
	for rows.Next() {
		n++
	}
	if err := rows.Err(); err != nil || n != 100 {
		t.Errorf("%d rows, %v; want 100", n, err)
	}
}

// A scope shared by goroutines that also use what it handed out (a
// *sql.Tx, a *sql.Stmt, the *sql.Conn, the *pgx.Conn) alongside its own
// statements, with contexts that end mid-statement: database/sql and pgx
// drive the connection under its lock from any goroutine, and the scope
// reads the connection's state under that lock too. Nothing races (-race),
// panics (database/sql's Conn.Raw dereferenced nil on a *sql.Conn closed
// under it) or hangs, and the next unit of work on the pool finds a clean
// session.
func TestScopeSharedWithHandles(t *testing.T) {
	t.Parallel()
	forDrivers(t, testScopeSharedWithHandles)
}

func testScopeSharedWithHandles(t *testing.T, drv string) {
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	p, _ := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 2, WaitTimeout: time.Minute})
	for round := range 8 {
		noHang(t, "a unit of work", func() {
			ctx, scope := p.Scope(tenant.With(context.Background(), "x"))
			defer scope.End()
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
					for range 40 {
						sharedStep(ctx, scope, r, drv == pgxDriver)
					}
				})
			}
			wg.Wait()
		})
	}
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		var y, tn string
		if err := s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.y', true), ''), coalesce(current_setting('app.tenant', true), '')").Scan(&y, &tn); err != nil {
			return err
		}
		if y != "" || tn != "" {
			return fmt.Errorf("the next unit sees app.y %q and app.tenant %q", y, tn)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// sharedStep runs one random step of TestScopeSharedWithHandles; its
// errors (ErrConnBusy, a context that ended, a connection lost to one)
// are the scope's answers, not the test's business.
//
// With handles false (another driver), what the scope handed out is not
// used beside the scope's own statements: there a *sql.Tx, *sql.Stmt or
// *sql.Conn used on another goroutine while the scope reads rows can
// reach that driver between two rows (the exception GUARANTEES.md and the
// package doc name), and pgx's stdlib panics in Rows.Next.
func sharedStep(ctx context.Context, scope *dbctx.Scope, r *rand.Rand, handles bool) {
	c := tenant.With(ctx, []string{"a", "b", "c"}[r.IntN(3)])
	if r.IntN(4) == 0 {
		var cancel context.CancelFunc
		c, cancel = context.WithTimeout(c, time.Duration(r.IntN(2000))*time.Microsecond)
		defer cancel()
	}
	switch r.IntN(10) {
	case 0:
		var s string
		scope.QueryRowContext(c, "SELECT current_setting('app.tenant')").Scan(&s)
	case 1:
		if rows, err := scope.Query(c, "SELECT generate_series(1, 100)"); err == nil {
			for rows.Next() {
			}
			rows.Close()
		}
	case 2:
		b := &pgx.Batch{}
		b.Queue("SELECT 1")
		b.Queue("SELECT set_config('app.x', 'y', true)")
		scope.SendBatch(c, b).Close()
	case 3:
		dbctx.Atomic(c, func(c context.Context) error {
			_, err := scope.ExecContext(c, "SELECT 1")
			return err
		})
	case 4:
		if rows, err := scope.QueryContext(c, "SELECT generate_series(1, 50)"); err == nil {
			if r.IntN(2) == 0 {
				for rows.Next() {
				}
			}
			rows.Close()
		}
	case 5:
		if tx, err := scope.BeginTx(c, nil); err == nil {
			if handles {
				tx.ExecContext(c, "SELECT 1")
			}
			if r.IntN(2) == 0 {
				tx.Commit()
			} else {
				tx.Rollback()
			}
		}
	case 6:
		if conn, err := scope.Conn(c); err == nil && handles {
			conn.ExecContext(c, "SELECT 1")
		}
	case 7:
		scope.Pgx(c, func(pc *pgx.Conn) error {
			_, err := pc.Exec(c, "SELECT 1")
			return err
		})
	case 8:
		if st, err := scope.PrepareContext(c, "SELECT $1::int"); err == nil {
			if handles {
				st.ExecContext(c, 1)
			}
			st.Close()
		}
	case 9:
		scope.ExecContext(c, "SET app.y = 'z'")
	}
}

// Scope.Pgx's fn must not use the scope; where it does, the statement
// fails at once with ErrConnBusy, where it waited forever for the
// connection's lock, which fn holds. After fn the scope works as before.
func TestPgxFnUsesScope(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	noHang(t, "a statement of the scope inside Scope.Pgx's fn", func() {
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			err := s.Pgx(ctx, func(*pgx.Conn) error {
				var n int
				return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
			})
			if !errors.Is(err, dbctx.ErrConnBusy) {
				return fmt.Errorf("a statement of the scope inside fn: %v, want ErrConnBusy", err)
			}
			err = s.Pgx(ctx, func(*pgx.Conn) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := s.Exec(ctx, "SELECT 1")
					return err
				})
			})
			if !errors.Is(err, dbctx.ErrConnBusy) {
				return fmt.Errorf("Atomic inside fn: %v, want ErrConnBusy", err)
			}
			err = s.Pgx(ctx, func(*pgx.Conn) error { return dbctx.CloseOld(ctx) })
			if !errors.Is(err, dbctx.ErrConnBusy) {
				return fmt.Errorf("CloseOld inside fn: %v, want ErrConnBusy", err)
			}
			var n int
			return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// A boundary that comes while a goroutine's Commit of a BeginTx
// transaction is under way (which the doc says not to do: boundaries
// wait for the unit's goroutines) waits for it rather than read the
// connection under it: -race sees nothing, the Commit reports what
// PostgreSQL did, and the scope's next statement runs. The COMMIT is held
// by a deferred trigger waiting for an advisory lock the test holds.
func TestBoundaryDuringCommit(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "finds the transaction's backend in pg_stat_activity, which a pooler hides")
	p, env := newPool(t, nil)
	sch := env.Schema()
	const key = 917263551
	for _, q := range []string{
		"CREATE TABLE " + sch + ".t (n int)",
		"CREATE FUNCTION " + sch + ".held() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock(" + strconv.Itoa(key) + "); RETURN NULL; END $$",
		"CREATE CONSTRAINT TRIGGER held AFTER INSERT ON " + sch + ".t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " + sch + ".held()",
	} {
		mustExec(t, env.Admin(), q)
	}
	lock, err := env.Admin().Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(context.Background(), "SELECT pg_advisory_lock($1)", key); err != nil {
		t.Fatal(err)
	}
	noHang(t, "a boundary during a Commit", func() {
		ctx, scope := p.Scope(context.Background())
		defer scope.End()
		var pid int
		if err := scope.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		tx, err := scope.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
			t.Fatal(err)
		}
		committed := make(chan error, 1)
		go func() { committed <- tx.Commit() }()
		for waiting := false; !waiting; {
			err := env.Admin().QueryRow("SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", pid).Scan(&waiting)
			if err != nil {
				t.Fatal(err)
			}
		}
		boundary := make(chan error, 1)
		go func() { boundary <- dbctx.CloseOld(ctx) }()
		if _, err := lock.ExecContext(context.Background(), "SELECT pg_advisory_unlock($1)", key); err != nil {
			t.Fatal(err)
		}
		if err := <-committed; err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if err := <-boundary; err != nil {
			t.Fatalf("the boundary: %v", err)
		}
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + sch + ".t").Scan(&n); err != nil || n != 1 {
			t.Fatalf("%d rows committed (%v), want the Commit's 1", n, err)
		}
		if err := scope.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
			t.Fatalf("the scope after the boundary: %v", err)
		}
	})
}

// A unit of work that returns with rows of BeginTx's *sql.Tx still open,
// under a context that never ends (a forgotten rows.Close). On pgx's
// driver its boundary cannot roll the transaction back, and discards the
// connection: it is really closed, its backend leaves pg_stat_activity,
// and the next unit, on a pool of one connection, gets one, where
// database/sql kept the closed one counted open for ever (the *sql.Tx
// held it) and every later unit failed with ErrUnavailable after
// ConnectTimeout. On another driver database/sql's rollback closes the
// rows, and the connection is kept.
func TestTxRowsLeftOpenEnded(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "finds the unit's backend in pg_stat_activity, which a pooler hides")
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol", otherDriver} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			opts := dbctx.Options{ConnectTimeout: 5 * time.Second, Logger: quiet()}
			var p *dbctx.Pool
			if mode == otherDriver {
				db := env.OpenWrapped(t)
				db.SetMaxOpenConns(1)
				opts.MaxWorkers = 1
				p = poolOn(t, env, db, &opts)
			} else {
				p = onePoolInMode(t, env, mode, opts)
			}
			var pid int
			noHang(t, "a unit that leaves a transaction's rows open", func() {
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					var err error
					if pid, err = backendPID(ctx, s); err != nil {
						return err
					}
					tx, err := s.BeginTx(ctx, nil)
					if err != nil {
						return err
					}
					rows, err := tx.QueryContext(ctx, "SELECT g FROM generate_series(1, 100000) g")
					if err != nil {
						return err
					}
					rows.Next()
					return nil // rows and transaction left open
				})
				if err != nil {
					t.Fatalf("the unit: %v", err)
				}
			})
			for i := range 3 {
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT 1")
					return err
				})
				if err != nil {
					t.Fatalf("unit %d after it: %v", i+1, err)
				}
			}
			if mode != otherDriver {
				eventually(t, "the connection of the unit that left its transaction's rows open is closed", func() bool {
					return !slices.Contains(env.Backends(t), pid)
				})
			}
		})
	}
}

// A statement of the scope while rows of BeginTx's *sql.Tx are open, on
// the goroutine that holds them, returns ErrConnBusy, and the next unit
// of work finds the pool whole. On another driver it never returned:
// pgx's stdlib says driver.ErrBadConn for a busy connection, and
// database/sql's close of the *sql.Conn that follows waits for the
// *sql.Tx, whose rows only that goroutine could close. On pgx's driver
// the statement failed with pgx's own "conn busy"; it is now refused
// before anything is sent, and the rows and the scope work on. (On
// another driver over pgx's, a query that pgx found busy has broken the
// rows and the connection: see doc.go.)
func TestScopeWhileTxRowsOpen(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
		noHang(t, "a statement of the scope while rows of its *sql.Tx are open", func() {
			err := p.Do(tenant.With(context.Background(), "t1"), func(ctx context.Context, s *dbctx.Scope) error {
				tx, err := s.BeginTx(ctx, nil)
				if err != nil {
					return err
				}
				defer tx.Rollback()
				rows, err := tx.QueryContext(ctx, "SELECT g FROM generate_series(1, 1000) g")
				if err != nil {
					return err
				}
				defer rows.Close()
				rows.Next()
				dctx, cancel := context.WithTimeout(tenant.With(ctx, "t2"), 10*time.Second)
				defer cancel()
				if _, err := s.ExecContext(dctx, "SELECT 1"); !errors.Is(err, dbctx.ErrConnBusy) {
					return fmt.Errorf("ExecContext with the rows open: %v, want ErrConnBusy", err)
				}
				if _, err := queryInt(dctx, s, "SELECT 1"); !errors.Is(err, dbctx.ErrConnBusy) {
					return fmt.Errorf("QueryRowContext with the rows open: %v, want ErrConnBusy", err)
				}
				if drv == otherDriver {
					return nil
				}
				n := 1
				for rows.Next() {
					n++
				}
				if n != 1000 || rows.Err() != nil {
					return fmt.Errorf("the transaction's rows: %d read, %v; want 1000", n, rows.Err())
				}
				rows.Close()
				var got string
				if err := s.QueryRowContext(tenant.With(ctx, "t2"), "SELECT current_setting('app.tenant')").Scan(&got); err != nil || got != "t2" {
					return fmt.Errorf("a statement once the rows are closed: %q, %v; want t2", got, err)
				}
				return tx.Commit()
			})
			if err != nil {
				t.Fatal(err)
			}
		})
		err := p.Do(tenant.With(context.Background(), "t3"), func(ctx context.Context, s *dbctx.Scope) error {
			var got string
			if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&got); err != nil || got != "t3" {
				return fmt.Errorf("%q, %v; want t3", got, err)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("the next unit: %v", err)
		}
	})
}
