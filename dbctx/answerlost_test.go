package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
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

// A first write killed mid-statement (57P01, retryable) whose retry cannot
// get a connection (OnAcquire fails with a plain error): the statement must
// fail with an error, not crash.
func TestRetryFindsNoConnection(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills backends")
	var runs atomic.Int32
	errAcq := errors.New("acquire refused")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1, Logger: quiet(),
		OnAcquire: func(ctx context.Context, c *sql.Conn) error {
			if runs.Add(1) > 1 {
				return errAcq
			}
			return nil
		}})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".w (n int)")
	mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".w TO "+env.Role())
	killed := dbtest.KillWhenActive(t, env, "INSERT INTO w")
	var err error
	var pv any
	dbtest.NoHang(t, "the write", func() {
		defer func() { pv = recover() }()
		err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "INSERT INTO w SELECT 1 FROM pg_sleep(5)")
			return err
		})
	})
	<-killed
	var pe *dbctx.PanicError
	if pv != nil || errors.As(err, &pe) {
		if pe != nil {
			t.Logf("%s", pe.Stack)
		}
		t.Fatalf("crashed: recovered %v, err %v", pv, err)
	}
	t.Logf("err: %v", err)
}

// f registered through the context of a released savepoint (sp1) while a
// later sibling savepoint (sp2) is open, which then rolls back; the outer
// Atomic commits: sp1's work committed, so f must run once.
func TestOnCommitReleasedSavepointSiblingRollsBack(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".w (n int)")
	mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".w TO "+env.Role())
	var ran atomic.Int32
	errSp2 := errors.New("sp2 fails")
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			var ctx1 context.Context
			if err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				ctx1 = ctx
				_, err := s.ExecContext(ctx, "INSERT INTO w VALUES (1)")
				return err
			}); err != nil {
				return err
			}
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				done := make(chan struct{})
				go func() { // another goroutine finishing sp1's work
					defer close(done)
					dbctx.OnCommit(ctx1, func() { ran.Add(1) })
				}()
				<-done
				return errSp2
			})
			if !errors.Is(err, errSp2) {
				return err
			}
			return nil
		})
	})
	var n int
	if err2 := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".w").Scan(&n); err2 != nil {
		t.Fatal(err2)
	}
	if err != nil || n != 1 || ran.Load() != 1 {
		t.Fatalf("Do: %v, rows %d (sp1 committed), OnCommit via sp1's context ran %d times; want nil, 1, 1", err, n, ran.Load())
	}
}

// A NOTIFY outside a transaction whose answer is lost after PostgreSQL
// committed it (Mute, then Cut) is not run again, though it leaves no
// session state: it is ErrCommitUnknown, and the notification is
// delivered once.
func TestNotifyAnswerLost(t *testing.T) {
	for _, q := range []string{"NOTIFY lost_ch, 'once'", "SELECT pg_notify('lost_ch', 'once')"} {
		t.Run(q[:6], func(t *testing.T) {
			pgtest.SkipPooled(t, "cuts the connection")
			env := newEnv(t)
			ch := "lost_" + env.Schema()
			q := strings.ReplaceAll(q, "lost_ch", ch)
			got := listen(t, env, ch)
			px := newProxy(t, env)
			p := poolOn(t, env, openDSN(t, px.DSN()), &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
			keepAcrossMute(p)
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					px.Mute()
					_, err := s.ExecContext(ctx, q)
					return err
				})
			}()
			eventually(t, "the notification", func() bool { return got.Load() >= 1 })
			px.Cut()
			px.Restore()
			var derr error
			dbtest.NoHang(t, "the NOTIFY", func() { derr = <-done })
			_ = dbtest.Wait(2*time.Second, func() bool { return got.Load() >= 2 }) // a second delivery, if any
			if n := got.Load(); n != 1 || !errors.Is(derr, dbctx.ErrCommitUnknown) {
				t.Fatalf("NOTIFY committed, its answer lost: Do %v, %d notifications delivered; want ErrCommitUnknown, 1", derr, n)
			}
		})
	}
}

// The same as groups' Send outside Atomic does it: SELECT pg_notify($1, $2)
// with arguments, in each of pgx's exec modes.
func TestNotifyArgsAnswerLost(t *testing.T) {
	eachExecMode(t, func(t *testing.T, mode string, _ int) {
		pgtest.SkipPooled(t, "cuts the connection")
		env := newEnv(t)
		ch := "lost_" + env.Schema()
		got := listen(t, env, ch)
		px := newProxy(t, env)
		p := poolInMode(t, env, px.DSN(), mode, dbctx.Options{Logger: quiet()})
		keepAcrossMute(p)
		for range 2 { // prepared/described in the modes that keep them
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT pg_notify($1, $2)", ch+"_warm", "x")
				return err
			}); err != nil {
				t.Fatal(err)
			}
		}
		done := make(chan error, 1)
		go func() {
			done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				px.Mute()
				_, err := s.ExecContext(ctx, "SELECT pg_notify($1, $2)", ch, "once")
				return err
			})
		}()
		eventually(t, "the notification", func() bool { return got.Load() >= 1 })
		px.Cut()
		px.Restore()
		var derr error
		dbtest.NoHang(t, "the NOTIFY", func() { derr = <-done })
		_ = dbtest.Wait(2*time.Second, func() bool { return got.Load() >= 2 })
		if n := got.Load(); n != 1 || derr == nil {
			t.Fatalf("pg_notify committed, its answer lost: Do %v, %d notifications delivered; want an error (not run again), 1", derr, n)
		}
	})
}

// OnCommit through the contexts of savepoints and transactions in every
// state, from other goroutines: a function runs once where the work it was
// registered in committed, never for a savepoint rolled back.
func TestOnCommitSavepointVariants(t *testing.T) {
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2, Logger: quiet()})
	p2 := dbtest.NewSecondPool(t, env, &dbctx.Options{MaxWorkers: 2, Logger: quiet()})
	errX := errors.New("x")
	inG := func(f func()) { d := make(chan struct{}); go func() { defer close(d); f() }(); <-d }
	count := func(name string, want int32, run func(f func())) {
		t.Helper()
		var n atomic.Int32
		run(func() { n.Add(1) })
		if n.Load() != want {
			t.Errorf("%s: ran %d, want %d", name, n.Load(), want)
		}
	}
	ctx := context.Background()
	count("rolled-back sp ctx, after outer commit", 0, func(f func()) {
		var c2 context.Context
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT 1")
				dbctx.Atomic(ctx, func(ctx context.Context) error { c2 = ctx; return errX })
				return nil
			})
		})
		dbctx.OnCommit(c2, f)
	})
	count("released sp inside rolled-back sp, registered during outer", 0, func(f func()) {
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT 1")
				var c3 context.Context
				dbctx.Atomic(ctx, func(ctx context.Context) error {
					dbctx.Atomic(ctx, func(ctx context.Context) error { c3 = ctx; return nil })
					return errX
				})
				inG(func() { dbctx.OnCommit(c3, f) })
				return nil
			})
		})
	})
	count("outer ctx from goroutine while a sibling sp is open and rolls back", 1, func(f func()) {
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(octx context.Context) error {
				s.ExecContext(octx, "SELECT 1")
				dbctx.Atomic(octx, func(ctx context.Context) error {
					inG(func() { dbctx.OnCommit(octx, f) })
					return errX
				})
				return nil
			})
		})
	})
	count("other pool: B's sp ctx after B committed, A open then commits", 1, func(f func()) {
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT 1")
				var cb context.Context
				err := p2.Do(ctx, func(ctx context.Context, s2 *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						s2.ExecContext(ctx, "SELECT 1")
						return dbctx.Atomic(ctx, func(ctx context.Context) error { cb = ctx; return nil })
					})
				})
				if err != nil {
					return err
				}
				inG(func() { dbctx.OnCommit(cb, f) })
				return nil
			})
		})
	})
	count("other pool: B's sp ctx after B committed, A rolls back", 0, func(f func()) {
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT 1")
				var cb context.Context
				p2.Do(ctx, func(ctx context.Context, s2 *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						s2.ExecContext(ctx, "SELECT 1")
						return dbctx.Atomic(ctx, func(ctx context.Context) error { cb = ctx; return nil })
					})
				})
				inG(func() { dbctx.OnCommit(cb, f) })
				return errX
			})
		})
	})
	count("B Atomic inside A's sp that rolls back, registered in B", 0, func(f func()) {
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT 1")
				dbctx.Atomic(ctx, func(ctx context.Context) error {
					p2.Do(ctx, func(ctx context.Context, s2 *dbctx.Scope) error {
						return dbctx.Atomic(ctx, func(ctx context.Context) error {
							s2.ExecContext(ctx, "SELECT 1")
							dbctx.OnCommit(ctx, f)
							return nil
						})
					})
					return errX
				})
				return nil
			})
		})
	})
	count("panicking sp recovered, its ctx used after", 0, func(f func()) {
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT 1")
				var cp context.Context
				func() {
					defer func() { recover() }()
					dbctx.Atomic(ctx, func(ctx context.Context) error { cp = ctx; panic("boom") })
				}()
				inG(func() { dbctx.OnCommit(cp, f) })
				return nil
			})
		})
	})
}

// Every write path, its answer lost after PostgreSQL committed it: the
// row must be there once and the caller told its outcome is unknown
// (ErrCommitUnknown; a batch's was a plain error); also
// where the reset the last unit owes rode with the write (owed), which
// was run again on another connection, and reported nil.
func TestAnswerLostEveryPath(t *testing.T) {
	paths := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"ExecContext": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (1)")
			return err
		},
		"ExecContextArgs": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES ($1)", 1)
			return err
		},
		"QueryRowContext": func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			return s.QueryRowContext(ctx, "INSERT INTO lost VALUES (1) RETURNING n").Scan(&n)
		},
		"QueryRowContextArgs": func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			return s.QueryRowContext(ctx, "INSERT INTO lost VALUES ($1) RETURNING n", 1).Scan(&n)
		},
		"QueryContext": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.QueryContext(ctx, "INSERT INTO lost VALUES (1) RETURNING n")
			if err != nil {
				return err
			}
			for rows.Next() {
			}
			rows.Close()
			return rows.Err()
		},
		"PgxExec": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.Exec(ctx, "INSERT INTO lost VALUES ($1)", 1)
			return err
		},
		"PgxQueryRow": func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			return s.QueryRow(ctx, "INSERT INTO lost VALUES ($1) RETURNING n", 1).Scan(&n)
		},
		"PgxQuery": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.Query(ctx, "INSERT INTO lost VALUES (1) RETURNING n")
			if err != nil {
				return err
			}
			for rows.Next() {
			}
			rows.Close()
			return rows.Err()
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue("INSERT INTO lost VALUES (1)")
			return s.SendBatch(ctx, b).Close()
		},
	}
	// Where the last unit left session state, the reset it owes rides
	// with the write (owed).
	for _, mode := range []string{"simple_protocol", "exec"} {
		for _, variant := range []string{"", "setting", "owed"} {
			set, owed := variant == "setting", variant == "owed"
			for name, f := range paths {
				tn := mode + "/" + name
				if variant != "" {
					tn += "/" + variant
				}
				t.Run(tn, func(t *testing.T) {
					t.Parallel()
					pgtest.SkipPooled(t, "cuts")
					env := newEnv(t)
					mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".lost (n int)")
					mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".lost TO "+env.Role())
					px := newProxy(t, env)
					p := poolInMode(t, env, px.DSN(), mode, dbctx.Options{Logger: quiet()})
					keepAcrossMute(p)
					rows := func() int {
						var n int
						if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".lost").Scan(&n); err != nil {
							t.Fatal(err)
						}
						return n
					}
					ctx := context.Background()
					if set {
						ctx = tenant.With(ctx, "7")
					}
					warm := "SELECT 1"
					if owed {
						warm = "SET work_mem = '7MB'"
					}
					if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
						_, err := s.ExecContext(ctx, warm)
						return err
					}); err != nil {
						t.Fatal(err)
					}
					done := make(chan error, 1)
					go func() {
						done <- p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
							px.Mute()
							return f(ctx, s)
						})
					}()
					eventually(t, "the row committed", func() bool { return rows() == 1 })
					px.Cut()
					px.Restore()
					var err error
					dbtest.NoHang(t, "the write", func() { err = <-done })
					if n := rows(); n != 1 || !errors.Is(err, dbctx.ErrCommitUnknown) {
						t.Fatalf("write committed, answer lost: %v, %d rows; want ErrCommitUnknown, 1 row", err, n)
					}
					t.Logf("%v", err)
				})
			}
		}
	}
}

// The first write of an Atomic (its BEGIN in the same round trip), its
// answer lost: nothing can have committed (no COMMIT was sent), and the
// error is not ErrCommitUnknown.
func TestAtomicFirstWriteAnswerLost(t *testing.T) {
	// (Not cache_statement, whose first run of the INSERT after BEGIN may
	// wait for its description, which the muted proxy drops: the INSERT
	// then never runs, and the test waits for it in vain.)
	for _, mode := range []string{"simple_protocol", "exec"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			pgtest.SkipPooled(t, "cuts")
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".lost (n int)")
			mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".lost TO "+env.Role())
			px := newProxy(t, env)
			p := poolInMode(t, env, px.DSN(), mode, dbctx.Options{Logger: quiet()})
			keepAcrossMute(p)
			ctx := context.Background()
			if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() {
				done <- p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						px.Mute()
						_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (1)")
						return err
					})
				})
			}()
			eventually(t, "the INSERT to have run", func() bool {
				var n int
				env.Admin().QueryRow("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'lost' AND l.mode = 'RowExclusiveLock'").Scan(&n)
				return n > 0
			})
			px.Cut()
			px.Restore()
			var err error
			dbtest.NoHang(t, "the Atomic", func() { err = <-done })
			var n int
			env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".lost").Scan(&n)
			if n != 0 || err == nil || errors.Is(err, dbctx.ErrCommitUnknown) {
				t.Fatalf("Atomic's first INSERT, answer lost before any COMMIT: %v, %d rows; want an error that is not ErrCommitUnknown, 0 rows", err, n)
			}
			t.Logf("%v", err)
		})
	}
}

// The database stops answering (a stalled network) while the *sql.DB
// allows fewer connections than MaxWorkers: every connect fails, none
// because the pool's scopes hold the connections: an outage
// (ErrUnavailable), not ErrBusy, though the *sql.DB counts the connect
// under way as a connection in use.
func TestOutageBehindFewConnections(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "stalls")
	env := newEnv(t)
	px := newProxy(t, env)
	db := openDSN(t, px.DSN())
	db.SetMaxOpenConns(1)
	p := dbctx.New(db, &dbctx.Options{MaxWorkers: 2, ConnectTimeout: 300 * time.Millisecond, Logger: quiet()})
	px.Stall()
	errs := make([]error, 6)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			})
		}()
	}
	wg.Wait()
	busy, unavail := 0, 0
	for _, err := range errs {
		switch {
		case errors.Is(err, dbctx.ErrUnavailable):
			unavail++
		case errors.Is(err, dbctx.ErrBusy):
			busy++
			t.Logf("%v", err)
		}
	}
	st := p.Stats()
	px.Restore()
	p.Close()
	if unavail == 0 {
		t.Fatalf("an outage (every connect stalled, no work running): %d ErrBusy, %d ErrUnavailable; Stats.Unavailable %d", busy, unavail, st.Unavailable)
	}
}

// listen LISTENs on ch on a connection of its own until the test ends,
// and counts the notifications that arrive.
func listen(t *testing.T, env *pgtest.Env, ch string) *atomic.Int32 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	l, err := pgx.Connect(ctx, env.DSN())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if _, err := l.Exec(ctx, "LISTEN "+ch); err != nil {
		cancel()
		t.Fatal(err)
	}
	got := new(atomic.Int32)
	done := make(chan struct{})
	t.Cleanup(func() { cancel(); <-done; l.Close(context.Background()) })
	go func() {
		defer close(done)
		for {
			if _, err := l.WaitForNotification(ctx); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	return got
}
