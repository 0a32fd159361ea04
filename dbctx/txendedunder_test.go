package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Code the scope does not see (pgx's own transaction on Scope.Pgx's
// connection, a COMMIT or ROLLBACK on Scope.Conn's) that ends the
// transaction Atomic began: the scope's statements after it are refused,
// not run on their own outside any transaction, and Atomic says so,
// where it returned nil (or the fn's error, as if all was rolled back)
// with the rows before that end committed and those after it committed
// one by one. PostgreSQL's rows say what ran; the scope runs on after
// Atomic, with its tenant, no transaction left open.
func TestAtomicTxEndedUnderIt(t *testing.T) {
	t.Parallel()
	ends := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"pgx's own transaction": func(ctx context.Context, s *dbctx.Scope) error {
			return s.Pgx(ctx, func(c *pgx.Conn) error {
				tx, err := c.Begin(ctx)
				if err != nil {
					return err
				}
				return tx.Commit(ctx)
			})
		},
		"COMMIT on Conn": func(ctx context.Context, s *dbctx.Scope) error {
			c, err := s.Conn(ctx)
			if err == nil {
				_, err = c.ExecContext(ctx, "COMMIT")
			}
			return err
		},
		"ROLLBACK on Conn": func(ctx context.Context, s *dbctx.Scope) error {
			c, err := s.Conn(ctx)
			if err == nil {
				_, err = c.ExecContext(ctx, "ROLLBACK")
			}
			return err
		},
	}
	for name, end := range ends {
		for _, fnFails := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/fn fails %v", name, fnFails), func(t *testing.T) {
				t.Parallel()
				env := newEnv(t)
				rls(t, env)
				p := onePoolInMode(t, env, "exec", dbctx.Options{Logger: quiet(), TransactionPooling: pgtest.Pooled()})
				id := newID()
				fnErr := errors.New("fn's error")
				var second, after error
				err := p.Do(tenant.With(context.Background(), "t1"), func(ctx context.Context, s *dbctx.Scope) error {
					err := dbctx.Atomic(ctx, func(ctx context.Context) error {
						if _, err := s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'first')", id); err != nil {
							return err
						}
						if err := end(ctx, s); err != nil {
							return err
						}
						_, second = s.ExecContext(ctx, "INSERT INTO notes (id, name) VALUES ($1, 'second')", id+1)
						if fnFails {
							return fnErr
						}
						return nil
					})
					var v seen
					after = s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items)
					if after == nil && v != (seen{"t1", 10}) {
						t.Errorf("after Atomic the scope's statement saw %+v", v)
					}
					return err
				})
				if !errors.Is(second, dbctx.ErrInAtomic) {
					t.Errorf("the statement after the transaction's end: %v, want ErrInAtomic", second)
				}
				if !errors.Is(err, dbctx.ErrInAtomic) || fnFails && !errors.Is(err, fnErr) {
					t.Errorf("Atomic: %v, want ErrInAtomic (and fn's error where it failed)", err)
				}
				if after != nil {
					t.Errorf("the scope's statement after Atomic: %v", after)
				}
				if got := inserted(t, env, id+1); got.items != 0 {
					t.Errorf("the statement after the transaction's end ran, on its own: %+v", got)
				}
				if n := env.IdleInTransaction(t); n != 0 {
					t.Errorf("%d connections idle in transaction", n)
				}
			})
		}
	}
}

// On another driver, which does not report the transaction status, the
// same end of Atomic's transaction goes unseen; the statements after it
// still run with their own settings, applied for the session, not for a
// transaction that is over: they ran with what the session carried, here
// another context's tenant, or none.
func TestSettingsAfterAtomicTxEndedOtherDriver(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "raw access to a session kept from one transaction to the next")
	for _, end := range []string{"COMMIT", "ROLLBACK"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			rls(t, env)
			db := env.OpenWrapped(t)
			db.SetMaxOpenConns(1)
			p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				var v seen
				if err := s.QueryRowContext(tenant.With(ctx, "t2"), seenSQL).Scan(&v.tenant, &v.items); err != nil {
					return err
				}
				return dbctx.Atomic(tenant.With(ctx, "t1"), func(ctx context.Context) error {
					if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
						return err
					}
					c, err := s.Conn(ctx)
					if err != nil {
						return err
					}
					if _, err := c.ExecContext(ctx, end); err != nil {
						return err
					}
					for i := range 3 {
						if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
							return err
						}
						if v != (seen{"t1", 10}) {
							t.Errorf("statement %d after the transaction's end saw %+v", i, v)
						}
					}
					return nil
				})
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
}
