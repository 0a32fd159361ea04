package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5"
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

// tenant is a run-time parameter every statement of a unit of work runs
// with: row-level-security policies read it with
// current_setting('app.tenant', true).
var exampleTenant = dbctx.NewSetting("app.tenant")

// A unit of work declares its tenant in its context (an HTTP middleware
// after authentication, a websocket's Connect, a job); every statement
// run with that context runs with it, sent with the statement in the same
// round trip, and the next unit of work on the connection sees its own or
// none.
func ExampleSetting() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	for _, tenant := range []string{"acme", "globex", ""} {
		ctx := context.Background()
		if tenant != "" {
			ctx = exampleTenant.With(ctx, tenant)
		}
		err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			var got string
			err := s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.tenant', true), '')").Scan(&got)
			fmt.Printf("tenant: %q\n", got)
			return err
		})
		if err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// tenant: "acme"
	// tenant: "globex"
	// tenant: ""
}

// Behind PgBouncer in transaction pooling mode (pool_mode = transaction),
// the settings a unit of work declares go with each statement, for its
// transaction only, and session-level state is refused.
func ExampleOptions_transactionPooling() {
	// With PgBouncer: "postgres://app@pgbouncer:6432/app?default_query_exec_mode=exec".
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{TransactionPooling: true})
	defer pool.Close()

	ctx := exampleTenant.With(context.Background(), "acme")
	err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SET app.tenant = 'acme'")
		fmt.Println(errors.Is(err, dbctx.ErrSessionState))
		var tenant string
		if err := s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&tenant); err != nil {
			return err
		}
		fmt.Println(tenant)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// true
	// acme
}

// Pgx hands out the *pgx.Conn under the scope's connection, for what the
// Scope does not cover; the connection is discarded at the boundary, so
// that nothing kept of it reaches another scope.
func ExampleScope_Pgx() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	err := pool.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return s.Pgx(ctx, func(c *pgx.Conn) error {
			var n int
			err := c.QueryRow(ctx, "SELECT 6 * 7").Scan(&n)
			fmt.Println(n, c.PgConn().TxStatus() == 'I')
			return err
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("discarded:", pool.Stats().Discarded.Raw)
	// Output:
	// 42 true
	// discarded: 1
}

// A unit of work may carry a scope of each of several pools, a primary
// and a read replica: each pool finds its own, with slots, connection and
// boundaries of its own.
func ExamplePool_From() {
	primaryDB, replicaDB := openExample(), openExample() // in production, two servers
	defer primaryDB.Close()
	defer replicaDB.Close()
	primary, replica := dbctx.New(primaryDB, nil), dbctx.New(replicaDB, nil)
	defer primary.Close()
	defer replica.Close()

	// What middleware.DB(primary, replica) does for a request.
	ctx, ps := primary.Scope(context.Background())
	defer ps.End()
	ctx, rs := replica.Scope(ctx)
	defer rs.End()

	var a, b int
	if err := primary.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&a); err != nil {
		log.Fatal(err)
	}
	if err := replica.From(ctx).QueryRowContext(ctx, "SELECT 2").Scan(&b); err != nil {
		log.Fatal(err)
	}
	fmt.Println(a, b, primary.Stats().Pinned, replica.Stats().Pinned)
	// Output: 1 2 1 1
}
