package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/scopes"
	"github.com/jackc/pgx/v5"
)

var declTZ = dbctx.NewSetting("timezone")
var declApp = dbctx.NewSetting("app.h9x")

// A declared TimeZone (dbscope applies it, its caveat documented at
// NewSetting) does not make every dirty unit pay the drop of the
// prepared statements: it costs what a declared custom setting does.
func TestDeclaredParseSettingNoDrop(t *testing.T) {
	pgtest.SkipPooled(t, "counts")
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".log (id serial PRIMARY KEY, n int)")
	measure := func(st dbctx.Setting, val string) int64 {
		px := newProxy(t, env)
		p := countedPool(t, env, px, "cache_statement")
		ctx := st.With(context.Background(), val)
		unit := func() {
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var n int
				if err := s.QueryRowContext(ctx, "SELECT count(*) FROM log WHERE n > $1", 0).Scan(&n); err != nil {
					return err
				}
				_, err := s.ExecContext(ctx, "INSERT INTO log (n) VALUES ($1)", 1)
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		for range 3 {
			unit()
		}
		before := px.Trips()
		for range 10 {
			unit()
		}
		return px.Trips() - before
	}
	app := measure(declApp, "x")
	tz := measure(declTZ, "Asia/Tokyo")
	t.Logf("10 dirty units: app.h9x declared %d trips, timezone declared %d trips", app, tz)
	if tz > app {
		t.Errorf("a declared timezone costs %d round trips more over 10 dirty units than a declared app.* setting (%d vs %d)", tz-app, tz, app)
	}
}

// A nested Atomic whose statement owing the drop fails: the savepoint's
// rollback puts the outer transaction back to work (the drop is not tried
// in the failed transaction, where it would fail, and the ROLLBACK TO not
// sent).
func TestSavepointAfterFailedResolve(t *testing.T) {
	env := newEnv(t)
	for _, mode := range []string{"cache_statement", "cache_describe", "exec", "simple_protocol"} {
		for _, q := range []string{
			"SET TimeZone = 'Mars/Olympus'",
			"CREATE TEMP TABLE h9x AS SELECT 1/0 AS a",
			"SET LOCAL search_path = pg_temp, public; SELECT 1/0",
		} {
			t.Run(mode+"/"+q, func(t *testing.T) {
				p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
				var got int
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
							return err
						}
						ierr := dbctx.Atomic(ctx, func(ctx context.Context) error {
							_, err := s.ExecContext(ctx, q)
							return err
						})
						if ierr == nil {
							t.Fatal("inner statement did not fail")
						}
						t.Logf("inner: %v", ierr)
						return s.QueryRowContext(ctx, "SELECT 2").Scan(&got)
					})
				})
				if err != nil || got != 2 {
					t.Errorf("after the nested Atomic rolled back: %v (got %d)", err, got)
				}
			})
		}
	}
}

// The same in SQL: BEGIN; SAVEPOINT; a failing SET; ROLLBACK TO SAVEPOINT.
func TestRawSavepointAfterFailedResolve(t *testing.T) {
	env := newEnv(t)
	p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		for _, q := range []string{"BEGIN", "SAVEPOINT a", "SET TimeZone = 'Mars/Olympus'", "ROLLBACK TO SAVEPOINT a", "SELECT 1", "COMMIT"} {
			if _, err := s.ExecContext(ctx, q); err != nil && q != "SET TimeZone = 'Mars/Olympus'" {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// A top-level Atomic whose statement owing the drop fails: after its
// rollback the scope and the pool should go on.
func TestRollbackAfterFailedResolve(t *testing.T) {
	env := newEnv(t)
	for _, mode := range []string{"cache_statement", "exec"} {
		t.Run(mode, func(t *testing.T) {
			p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
			var got int
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				aerr := dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := s.ExecContext(ctx, "SET TimeZone = 'Mars/Olympus'")
					return err
				})
				t.Logf("atomic: %v", aerr)
				return s.QueryRowContext(ctx, "SELECT 2").Scan(&got)
			})
			if err != nil || got != 2 {
				t.Errorf("after the Atomic rolled back: %v (got %d)", err, got)
			}
			st := p.Stats()
			t.Logf("stats: %+v", st)
		})
	}
}

// After a SET DateStyle in the scope, a statement pgx prepared in an
// earlier scope, run through a handle the scope hands out.
func TestHandedOutAfterParseSetting(t *testing.T) {
	pgtest.SkipPooled(t, "one session")
	env := newEnv(t)
	const query = "SELECT '01/02/2020'::date::text"
	ways := map[string]func(ctx context.Context, s *dbctx.Scope) (string, error){
		"scope": func(ctx context.Context, s *dbctx.Scope) (x string, err error) {
			err = s.QueryRowContext(ctx, query).Scan(&x)
			return
		},
		"Pgx": func(ctx context.Context, s *dbctx.Scope) (x string, err error) {
			err = s.Pgx(ctx, func(c *pgx.Conn) error { return c.QueryRow(ctx, query).Scan(&x) })
			return
		},
		"Conn": func(ctx context.Context, s *dbctx.Scope) (x string, err error) {
			c, err := s.Conn(ctx)
			if err != nil {
				return "", err
			}
			err = c.QueryRowContext(ctx, query).Scan(&x)
			return
		},
		"BeginTx": func(ctx context.Context, s *dbctx.Scope) (x string, err error) {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return "", err
			}
			defer tx.Rollback()
			err = tx.QueryRowContext(ctx, query).Scan(&x)
			return
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope) (x string, err error) {
			b := &pgx.Batch{}
			b.Queue(query)
			br := s.SendBatch(ctx, b)
			defer br.Close()
			err = br.QueryRow().Scan(&x)
			return
		},
	}
	for name, way := range ways {
		t.Run(name, func(t *testing.T) {
			p := onePoolInMode(t, env, "cache_statement", dbctx.Options{Logger: quiet()})
			ctx := context.Background()
			var before, got string
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) (err error) {
				before, err = way(ctx, s)
				return
			}); err != nil {
				t.Fatal(err)
			}
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) (err error) {
				if _, err := s.ExecContext(ctx, "SET DateStyle = 'ISO, DMY'"); err != nil {
					return err
				}
				got, err = way(ctx, s)
				return
			}); err != nil {
				t.Fatal(err)
			}
			if got == before {
				t.Errorf("%s: after SET DateStyle = 'ISO, DMY' the statement prepared before reads %s, as before it (want 2020-02-01)", name, got)
			}
		})
	}
}

// The wait for a COMMIT whose outcome is unknown to settle ends with the
// caller's context and with Pool.Close, even while the side connection's
// connect hangs (the network stalled).
func TestSettleWaitEndsWithCallerAndClose(t *testing.T) {
	pgtest.SkipPooled(t, "cuts")
	env := newEnv(t)
	ctx := context.Background()
	sch := env.Schema()
	for _, q := range []string{
		"CREATE TABLE " + sch + ".work (n int)",
		"CREATE FUNCTION " + sch + ".hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock(4343); RETURN NULL; END $$",
		"CREATE CONSTRAINT TRIGGER hold AFTER INSERT ON " + sch + ".work DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " + sch + ".hold()",
	} {
		mustExec(t, env.Admin(), q)
	}
	lock, err := env.Admin().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "SELECT pg_advisory_lock(4343)"); err != nil {
		t.Fatal(err)
	}
	px := pgtest.NewProxy(t, env)
	db, err := sql.Open("pgx", px.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	uctx, ucancel := context.WithCancel(ctx)
	defer ucancel()
	done := make(chan error, 1)
	ran := make(chan struct{}, 1)
	go func() {
		done <- p.Do(uctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				scopes.OnCommitOrUnknown(ctx, func() {}, func() { ran <- struct{}{} })
				_, err := s.ExecContext(ctx, "INSERT INTO work VALUES (1)")
				return err
			})
		})
	}()
	dbtest.Eventually(t, "COMMIT waiting", func() bool {
		var n int
		env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'COMMIT' AND wait_event_type = 'Lock'").Scan(&n)
		return n == 1
	})
	px.Cut()
	r := px.Refused()
	dbtest.Eventually(t, "the pool asking", func() bool { return px.Refused() > r+1 })
	px.Stall() // now a new connect hangs instead of being refused
	px.Restore()
	px.Stall()
	dbtest.Eventually(t, "the side connect stuck", func() bool { return px.Conns() >= 1 })
	ucancel()
	start := time.Now()
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	select {
	case err := <-done:
		t.Logf("returned after %v: %v", time.Since(start), err)
		if !errors.Is(err, dbctx.ErrCommitUnknown) {
			t.Logf("not ErrCommitUnknown")
		}
	case <-time.After(10 * time.Second):
		t.Errorf("pool closed and the caller's context canceled: Atomic still waiting on the settle question after 10 s")
		err := <-done
		t.Logf("returned after %v: %v", time.Since(start), err)
	}
	<-closed
	t.Logf("Close returned after %v", time.Since(start))
	px.Restore()
}
