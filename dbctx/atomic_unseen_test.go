package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

// committedNs returns the n of table's committed rows, in order, as
// PostgreSQL has them.
func committedNs(t *testing.T, db *sql.DB, table string) []int {
	t.Helper()
	rows, err := db.Query("SELECT n FROM " + table + " ORDER BY n")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []int
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// A nested Atomic whose statements ran only on a *sql.Stmt that
// PrepareContext returned before it: the scope does not see those
// executions, as it does not see Conn's, so the savepoint must be sent
// before fn runs. Sent with the first statement of the scope's own, it
// was never sent, and the nested function's failure left its rows to
// commit with the outer transaction.
func TestNestedAtomicAfterPrepare(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, nil)
		table := env.Schema() + ".t"
		mustExec(t, env.Admin(), "CREATE TABLE "+table+" (n int)")
		errInvalid := errors.New("invalid input")
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				ins, err := s.PrepareContext(ctx, "INSERT INTO "+table+" VALUES ($1)")
				if err != nil {
					return err
				}
				if _, err := ins.ExecContext(ctx, 1); err != nil {
					return err
				}
				nerr := dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := ins.ExecContext(ctx, 2); err != nil {
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
		if got := committedNs(t, env.Admin(), table); !slices.Equal(got, []int{1}) {
			t.Fatalf("rows committed %v: want [1], the nested Atomic's rolled back", got)
		}
	})
}

// A nested Atomic begun while rows of the outer one are open: its
// savepoint goes at once (the transaction has begun), and cannot while
// the rows are open: the nested Atomic fails with ErrConnBusy, its
// function unrun, and the outer transaction goes on. Sent later, with the
// first statement of the scope's own, a function that took the
// connection from those rows (pgx.Rows.Conn) ran its statements with no
// savepoint, and its failure let them commit with the outer transaction.
func TestNestedAtomicAfterRowsConn(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	table := env.Schema() + ".t"
	mustExec(t, env.Admin(), "CREATE TABLE "+table+" (n int)")
	errInvalid := errors.New("invalid input")
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.Exec(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
				return err
			}
			rows, err := s.Query(ctx, "SELECT 1")
			if err != nil {
				return err
			}
			defer rows.Close()
			ran := false
			nerr := dbctx.Atomic(ctx, func(ctx context.Context) error {
				ran = true
				pc := rows.Conn()
				rows.Close()
				if _, err := pc.Exec(ctx, "INSERT INTO "+table+" VALUES (2)"); err != nil {
					return err
				}
				return errInvalid
			})
			if !errors.Is(nerr, dbctx.ErrConnBusy) || ran {
				t.Errorf("the nested Atomic: %v, its function run: %v; want ErrConnBusy, unrun", nerr, ran)
			}
			rows.Close()
			_, err = s.Exec(ctx, "INSERT INTO "+table+" VALUES (3)")
			return err
		})
	})
	if got := committedNs(t, env.Admin(), table); err != nil || !slices.Equal(got, []int{1, 3}) {
		t.Errorf("Atomic returned %v, rows committed %v; want nil, [1 3]", err, got)
	}
}
