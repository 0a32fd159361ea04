package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestAtomic(t *testing.T) {
	t.Parallel()
	errFail := errors.New("fail")
	cases := []struct {
		name string
		fn   func(ctx context.Context, s *dbctx.Scope) error
		want int // rows committed
		err  error
	}{
		{"commit", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error { return insert(ctx, s, 1) })
		}, 1, nil},
		{"rollback on error", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if err := insert(ctx, s, 1); err != nil {
					return err
				}
				return errFail
			})
		}, 0, errFail},
		{"rollback on panic", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				insert(ctx, s, 1)
				panic("boom")
			})
		}, 0, &dbctx.PanicError{}},
		{"nested failure rolls back inner only", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if err := insert(ctx, s, 1); err != nil {
					return err
				}
				err := dbctx.Atomic(ctx, func(ctx context.Context) error {
					insert(ctx, s, 2)
					return errFail
				})
				if !errors.Is(err, errFail) {
					return errors.New("inner error lost")
				}
				return dbctx.Atomic(ctx, func(ctx context.Context) error { return insert(ctx, s, 3) })
			})
		}, 2, nil},
		{"failed commit", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "SET CONSTRAINTS ALL DEFERRED"); err != nil {
					return err
				}
				if err := insert(ctx, s, 1); err != nil {
					return err
				}
				return insert(ctx, s, 1) // violates the deferred unique constraint at commit
			})
		}, 0, errCommit},
		{"BeginTx inside", func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.BeginTx(ctx, nil)
				return err
			})
		}, 0, dbctx.ErrInAtomic},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+
				".t (n int UNIQUE DEFERRABLE INITIALLY IMMEDIATE)")
			err := p.Do(context.Background(), tc.fn)
			switch want := tc.err.(type) {
			case nil:
				if err != nil {
					t.Fatal(err)
				}
			case *dbctx.PanicError:
				if !errors.As(err, &want) {
					t.Fatalf("got %v, want a panic", err)
				}
			default:
				if want == errCommit {
					if err == nil || !strings.Contains(err.Error(), "dbctx: commit") {
						t.Fatalf("got %v, want a commit error", err)
					}
				} else if !errors.Is(err, want) {
					t.Fatalf("got %v, want %v", err, want)
				}
			}
			n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
				return queryInt(ctx, s, "SELECT count(*) FROM t")
			})
			if err != nil || n != tc.want {
				t.Fatalf("committed rows: %d, %v; want %d", n, err, tc.want)
			}
		})
	}
}

var errCommit = errors.New("commit")

func insert(ctx context.Context, s *dbctx.Scope, n int) error {
	_, err := s.ExecContext(ctx, "INSERT INTO t VALUES ($1)", n)
	return err
}

func TestOnCommit(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	var ran []string
	note := func(s string) func() { return func() { ran = append(ran, s) } }
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		dbctx.OnCommit(ctx, note("outside"))
		dbctx.Atomic(ctx, func(ctx context.Context) error {
			insert(ctx, s, 1)
			dbctx.OnCommit(ctx, note("committed"))
			dbctx.Atomic(ctx, func(ctx context.Context) error {
				dbctx.OnCommit(ctx, note("inner rolled back"))
				return errors.New("inner fails")
			})
			if len(ran) != 1 {
				t.Errorf("ran before commit: %v", ran)
			}
			return nil
		})
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			insert(ctx, s, 2)
			dbctx.OnCommit(ctx, note("outer rolled back"))
			return errors.New("outer fails")
		})
	})
	if err == nil {
		t.Fatal("want the last Atomic's error")
	}
	if fmt.Sprint(ran) != "[outside committed]" {
		t.Fatalf("ran %v, want [outside committed]", ran)
	}
}

// A function registered with OnCommit through a nested Atomic's context
// after that Atomic ended (from a goroutine that kept the context) goes
// with the savepoint's outcome: dropped where it rolled back, though the
// transaction around it commits; at that transaction's commit, not at
// once, where it was released.
func TestOnCommitAfterSavepoint(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	var ran []string
	note := func(s string) func() { return func() { ran = append(ran, s) } }
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			var rolledBack, released context.Context
			dbctx.Atomic(ctx, func(ctx context.Context) error {
				rolledBack = ctx
				return errors.New("inner fails")
			})
			if err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				released = ctx
				return nil
			}); err != nil {
				return err
			}
			done := make(chan struct{})
			go func() { // as a goroutine that kept the contexts would
				defer close(done)
				dbctx.OnCommit(rolledBack, note("rolled back"))
				dbctx.OnCommit(released, note("released"))
			}()
			<-done
			if len(ran) != 0 {
				t.Errorf("ran before the commit: %v", ran)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(ran) != "[released]" {
		t.Fatalf("ran %v, want [released]", ran)
	}
}

// An Atomic whose function returns with rows of a statement in its
// transaction still open cannot send COMMIT (nor ROLLBACK): it fails with
// ErrConnBusy, and the scope's later statements fail with ErrSessionLost
// until the boundary rather than run in the transaction, which the
// boundary rolls back, and be lost with it. PostgreSQL is asked what was
// committed.
func TestAtomicEndsWithRowsOpen(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{Logger: quiet()})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".t TO "+env.Role())
	for _, commit := range []bool{true, false} {
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			var rows *sql.Rows
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
					return err
				}
				var err error
				if rows, err = s.QueryContext(ctx, "SELECT generate_series(1, 3)"); err != nil {
					return err
				}
				if !commit {
					return errors.New("roll back")
				}
				return nil // rows left open
			})
			if commit && !errors.Is(err, dbctx.ErrConnBusy) {
				t.Errorf("Atomic with rows open: %v, want ErrConnBusy", err)
			}
			rows.Close()
			if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (2)"); !errors.Is(err, dbctx.ErrSessionLost) {
				t.Errorf("commit %v: a statement after the lost transaction: %v, want ErrSessionLost", commit, err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 0 {
			t.Errorf("commit %v: %d rows committed (%v), want 0", commit, n, err)
		}
		if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT 1")
			return err
		}); err != nil {
			t.Errorf("commit %v: the next unit of work: %v", commit, err)
		}
	}
}

// A nested Atomic that fails while rows of a statement in it are still
// open cannot roll back to its savepoint: its work would otherwise stay in
// the outer transaction and commit with it. The outer Atomic's commit
// rolls back instead, and says so; PostgreSQL counts what was committed.
func TestNestedAtomicFailsWithRowsOpen(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{Logger: quiet()})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".t TO "+env.Role())
	var outer error
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		outer = dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
				return err
			}
			var rows *sql.Rows
			inner := dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (2)"); err != nil {
					return err
				}
				var err error
				rows, err = s.QueryContext(ctx, "SELECT generate_series(1, 3)")
				if err != nil {
					return err
				}
				return errors.New("roll back the inner one") // rows left open
			})
			if inner == nil {
				t.Error("the inner Atomic succeeded")
			}
			rows.Close()
			return nil
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var rows []int
	r, err := env.Admin().Query("SELECT n FROM " + env.Schema() + ".t ORDER BY n")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for r.Next() {
		var n int
		r.Scan(&n)
		rows = append(rows, n)
	}
	if len(rows) != 0 || outer == nil {
		t.Errorf("committed %v, the outer Atomic returned %v; want nothing committed, and an error", rows, outer)
	}
}

// A COMMIT that reached the server, whose answer was lost with the
// connection, leaves its outcome unknown: PostgreSQL committed here (it
// holds the row), and Atomic says ErrCommitUnknown, not a failure that
// would mean the work did not happen. One the server refused is its
// error, and one never sent its context's.
func TestCommitAnswerLost(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cuts the connection to the server")
	env := newEnv(t)
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".lost (n int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED)")
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
	done := make(chan error, 1)
	go func() {
		done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (1)")
				px.Mute() // the COMMIT reaches the server, its answer does not come back
				return err
			})
		})
	}()
	eventually(t, "the row committed", func() bool { return rows() == 1 })
	px.Cut()
	err := <-done
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("a COMMIT that PostgreSQL ran, its answer lost: %v, want ErrCommitUnknown", err)
	}
	if n := p.Stats().OutcomesUnknown; n != 1 {
		t.Errorf("Stats.OutcomesUnknown = %d, want 1", n)
	}
	px.Restore()

	// Cut before the COMMIT, the socket closed by then: not sent, so the
	// transaction is known lost.
	err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			pid, err := backendPID(ctx, s)
			if err != nil {
				return err
			}
			if _, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (3)"); err != nil {
				return err
			}
			px.Cut()
			eventually(t, "the backend gone", func() bool {
				var n int
				return env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&n) == nil && n == 0
			})
			return nil
		})
	})
	if !errors.Is(err, dbctx.ErrSessionLost) || errors.Is(err, dbctx.ErrCommitUnknown) || rows() != 1 {
		t.Fatalf("cut before COMMIT: %v, %d rows; want ErrSessionLost, 1 row", err, rows())
	}
	px.Restore()

	// Refused by the server (the deferred key, checked at COMMIT): known.
	err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (1)")
			return err
		})
	})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "23505" || errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("refused at COMMIT: %v", err)
	}
	// Never sent: its context ended first.
	ctx, cancel := context.WithCancel(context.Background())
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			_, err := s.ExecContext(ctx, "INSERT INTO lost VALUES (2)")
			cancel()
			return err
		})
	})
	if !errors.Is(err, context.Canceled) || errors.Is(err, dbctx.ErrCommitUnknown) || rows() != 1 {
		t.Fatalf("not sent: %v, %d rows", err, rows())
	}
}

// A panic in an OnCommit function, after the commit, is logged at Error:
// the work stays committed, Atomic returns nil, and the functions after
// it run.
func TestOnCommitPanics(t *testing.T) {
	t.Parallel()
	logs, logger := dbtest.NewLogs()
	p, env := newPool(t, &dbctx.Options{Logger: logger})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".done (n int)")
	var ran []int
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.OnCommit(ctx, func() { ran = append(ran, 1) })
			dbctx.OnCommit(ctx, func() { panic("a callback's bug") })
			dbctx.OnCommit(ctx, func() { ran = append(ran, 3) })
			_, err := s.ExecContext(ctx, "INSERT INTO done VALUES (1)")
			return err
		})
	})
	if err != nil {
		t.Fatalf("Atomic: %v, want nil: it committed", err)
	}
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".done").Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows: %d, %v", n, err)
	}
	if fmt.Sprint(ran) != "[1 3]" {
		t.Errorf("ran %v, want [1 3]", ran)
	}
	var recs []dbtest.Record
	for _, r := range logs.AtLeast(slog.LevelError) {
		if strings.HasPrefix(r.Msg, "dbctx: an OnCommit function panicked") {
			recs = append(recs, r)
		}
	}
	if len(recs) != 1 || recs[0].Attrs["panic"] != "a callback's bug" || !strings.Contains(recs[0].Attrs["stack"], "atomic_test.go") {
		t.Errorf("logged %+v, want the panic once at Error with its stack", recs)
	}
}
