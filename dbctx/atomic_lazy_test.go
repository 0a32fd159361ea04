package dbctx_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

// A nested Atomic whose function runs no statement sends nothing, as an
// outer one does not: its savepoint goes with the first statement inside
// it. It sent SAVEPOINT (and the outer BEGIN) before its function ran, so
// a unit of work that touched no database took a slot and a connection,
// and, with none to be had, got ErrBusy in place of its function's own
// error (a validation error answered 503).
func TestNestedAtomicTakesNoSlot(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
		mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
		errInvalid := errors.New("invalid input")

		// The pool's only slot held, as by a long request.
		hctx, holder := p.Scope(context.Background())
		defer holder.End()
		if err := holder.Reserve(hctx); err != nil {
			t.Fatal(err)
		}
		ctx, s := p.Scope(context.Background())
		defer s.End()
		committed := false
		err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.OnCommit(ctx, func() { committed = true })
			if err := dbctx.Atomic(ctx, func(ctx context.Context) error { return nil }); err != nil {
				return err
			}
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error { return errInvalid })
			})
		})
		if !errors.Is(err, errInvalid) {
			t.Fatalf("Atomic with nested Atomic calls that touch no database: %v, want the function's error", err)
		}
		if committed {
			t.Error("OnCommit ran for a failed Atomic")
		}
		err = dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.OnCommit(ctx, func() { committed = true })
			return dbctx.Atomic(ctx, func(ctx context.Context) error { return nil })
		})
		if err != nil || !committed {
			t.Fatalf("Atomic: %v, OnCommit ran: %v", err, committed)
		}
		if st := p.Stats(); st.Acquired != 0 || st.Busy != 0 {
			t.Fatalf("connections pinned %d, refused %d: want none", st.Acquired, st.Busy)
		}
		s.End()
		holder.End()

		// Savepoints still roll back what ran inside them, and only that,
		// whether the statements came before, inside or after them, and
		// however deep.
		ctx, s = p.Scope(context.Background())
		defer s.End()
		ins := func(ctx context.Context, n int) error {
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES ($1)", n)
			return err
		}
		err = dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.Atomic(ctx, func(ctx context.Context) error { // nothing, rolled back
				return dbctx.Atomic(ctx, func(ctx context.Context) error { return errInvalid })
			})
			dbctx.Atomic(ctx, func(ctx context.Context) error { // two levels, the inner's row rolled back
				if err := ins(ctx, 1); err != nil {
					return err
				}
				dbctx.Atomic(ctx, func(ctx context.Context) error {
					ins(ctx, 100)
					return errInvalid
				})
				return nil
			})
			dbctx.Atomic(ctx, func(ctx context.Context) error { // savepoints of both levels with the first statement
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					ins(ctx, 101)
					return errInvalid
				})
			})
			if err := ins(ctx, 2); err != nil {
				return err
			}
			dbctx.Atomic(ctx, func(ctx context.Context) error { return nil }) // after the transaction began
			dbctx.Atomic(ctx, func(ctx context.Context) error { return errInvalid })
			return dbctx.Atomic(ctx, func(ctx context.Context) error { return ins(ctx, 3) })
		})
		if err != nil {
			t.Fatal(err)
		}
		var n, sum int
		if err := s.QueryRowContext(ctx, "SELECT count(*), coalesce(sum(n), 0) FROM t").Scan(&n, &sum); err != nil {
			t.Fatal(err)
		}
		if n != 3 || sum != 6 {
			t.Fatalf("committed %d rows summing %d, want rows 1, 2, 3", n, sum)
		}
	})
}

// Where a nested Atomic's first statement begins the transaction, OnBegin
// runs before its savepoint: rolling the nested Atomic back keeps what
// OnBegin set for the transaction.
func TestNestedAtomicSavepointAfterOnBegin(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, &dbctx.Options{OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT set_config('app.on_begin', 'yes', true)")
			return err
		}})
		mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
		errInvalid := errors.New("invalid input")
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				err := dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
						return err
					}
					return errInvalid
				})
				if !errors.Is(err, errInvalid) {
					t.Errorf("nested Atomic: %v", err)
				}
				var v string
				if err := s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.on_begin', true), '')").Scan(&v); err != nil {
					return err
				}
				if v != "yes" {
					t.Errorf("after the nested Atomic rolled back, OnBegin's setting is %q", v)
				}
				_, err = s.ExecContext(ctx, "INSERT INTO t VALUES (2)")
				return err
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
			return queryInt(ctx, s, "SELECT coalesce(sum(n), 0) FROM t")
		})
		if err != nil || n != 2 {
			t.Fatalf("committed rows sum to %d (%v), want the row after the nested Atomic alone", n, err)
		}
	})
}

// An Atomic whose context has ended by its commit returns the context's
// error, OnCommit's functions unrun, whether or not its function ran a
// statement: a request whose client left sends no group message and no
// email at OnCommit. Where no statement ran it returned nil and ran them.
func TestAtomicContextEndedWithoutStatements(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	for _, statement := range []bool{false, true} {
		ctx, s := p.Scope(context.Background())
		ctx, cancel := context.WithCancel(ctx)
		ran := false
		err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			if statement {
				if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
					return err
				}
			}
			dbctx.OnCommit(ctx, func() { ran = true })
			cancel() // the client leaves
			return nil
		})
		if !errors.Is(err, context.Canceled) || ran {
			t.Errorf("statement run: %v: Atomic returned %v, OnCommit ran: %v; want context.Canceled, not run", statement, err, ran)
		}
		s.End()
	}
}

// A nested Atomic inside which only a connection handed out before it
// runs statements (Scope.Conn, Scope.Pgx, kept from the outer Atomic)
// still rolls them back when its function fails: its savepoint goes at
// once, as nothing of the scope's could carry it. Sent with the first
// statement of the scope's own, it was never sent, and the nested
// function's failure left its rows to commit with the outer transaction.
func TestNestedAtomicAfterHandOut(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, nil)
		table := env.Schema() + ".t"
		mustExec(t, env.Admin(), "CREATE TABLE "+table+" (n int)")
		errInvalid := errors.New("invalid input")
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				conn, err := s.Conn(ctx)
				if err != nil {
					return err
				}
				if _, err := conn.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
					return err
				}
				nerr := dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := conn.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)"); err != nil {
						return err
					}
					return errInvalid
				})
				if !errors.Is(nerr, errInvalid) {
					t.Errorf("the nested Atomic: %v, want its function's error", nerr)
				}
				return nil
			})
		})
		if err != nil {
			t.Fatal(err)
		}
		var got []int
		rows, err := env.Admin().Query("SELECT n FROM " + table + " ORDER BY n")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var n int
			rows.Scan(&n)
			got = append(got, n)
		}
		if len(got) != 1 || got[0] != 1 {
			t.Fatalf("rows committed %v: want [1], the nested Atomic's rolled back", got)
		}
	})
}
