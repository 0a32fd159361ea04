package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/dbscope/dbscope/dbctx"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func openExample() *sql.DB {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	return db
}

// Do runs database work in a worker slot; the connection is checked before
// use and given back clean when fn returns.
func ExampleDo() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	ctx, scope := pool.Scope(context.Background())
	defer scope.End()

	sum, err := dbctx.DoValue(ctx, func(ctx context.Context, s *dbctx.Scope) (int, error) {
		var n int
		err := s.QueryRowContext(ctx, "SELECT 40 + $1::int", 2).Scan(&n)
		return n, err
	})
	if errors.Is(err, dbctx.ErrBusy) {
		fmt.Println("overloaded: try again later")
		return
	}
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sum)
	// Output: 42
}

// CloseOld is the boundary a long-lived unit of work runs when it wakes
// up: with the default ConnMaxAge of 0 the connection pinned since the
// last boundary is given back, and the next statement takes a checked one.
func ExampleCloseOld() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	ctx, scope := pool.Scope(context.Background())
	defer scope.End()
	for event := range 3 { // events a consumer is woken by
		if err := dbctx.CloseOld(ctx); err != nil {
			log.Print(err)
		}
		var n int
		if err := scope.QueryRowContext(ctx, "SELECT $1::int", event).Scan(&n); err != nil {
			log.Fatal(err)
		}
		fmt.Println("event", n)
	}
	fmt.Println("pinned after the last boundary:", pool.Stats().Pinned)
	// Output:
	// event 0
	// event 1
	// event 2
	// pinned after the last boundary: 1
}

// Atomic commits when its function returns nil and rolls back otherwise.
func ExampleAtomic() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	err := pool.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.ExecContext(ctx, "CREATE TEMP TABLE accounts (id int, balance int)"); err != nil {
			return err
		}
		err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO accounts VALUES (1, 100)"); err != nil {
				return err
			}
			return errors.New("insufficient funds") // rolls the insert back
		})
		fmt.Println("atomic:", err)
		var n int
		if err := s.QueryRowContext(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil {
			return err
		}
		fmt.Println("rows:", n)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// atomic: insufficient funds
	// rows: 0
}

type tenantCtxKey struct{}

// OnAcquire sets per-scope session state (a tenant for row-level security)
// from the context; the session is reset before the connection is given
// back, so the next scope never sees it.
func ExampleOptions_hooks() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{
		OnAcquire: func(ctx context.Context, conn *sql.Conn) error {
			tenant, _ := ctx.Value(tenantCtxKey{}).(string)
			_, err := conn.ExecContext(ctx, "SELECT set_config('app.tenant', $1, false)", tenant)
			return err
		},
		OnRelease: func(ctx context.Context, conn *sql.Conn) error {
			return nil // the session was already reset; release other resources here
		},
	})
	defer pool.Close()

	for _, tenant := range []string{"acme", "globex"} {
		ctx := context.WithValue(context.Background(), tenantCtxKey{}, tenant)
		err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			var got string
			err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&got)
			fmt.Println("tenant:", got)
			return err
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// tenant: acme
	// tenant: globex
}

type exampleTenant struct{}

// Behind PgBouncer in transaction pooling mode (pool_mode = transaction),
// state goes per transaction: OnBegin sets the tenant in every
// transaction a scope begins, and session-level state is refused.
func ExampleOptions_transactionPooling() {
	// With PgBouncer: "postgres://app@pgbouncer:6432/app?default_query_exec_mode=exec".
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{
		TransactionPooling: true,
		OnBegin: func(ctx context.Context, s *dbctx.Scope) error {
			tenant, _ := ctx.Value(exampleTenant{}).(string)
			_, err := s.ExecContext(ctx, "SELECT set_config('app.tenant', $1, true)", tenant)
			return err
		},
	})
	defer pool.Close()

	ctx := context.WithValue(context.Background(), exampleTenant{}, "acme")
	err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SET app.tenant = 'acme'")
		fmt.Println(errors.Is(err, dbctx.ErrSessionState))
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			var tenant string
			if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&tenant); err != nil {
				return err
			}
			fmt.Println(tenant)
			return nil
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// true
	// acme
}
