package dbctx_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// OnWait, OnPin and OnDo let a tracer or a meter see the pool at work
// (package dbotel builds OpenTelemetry's spans and metrics on them): here
// they print what a Do waited for and pinned.
func ExampleOptions_observe() {
	db := openExample()
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{
		OnWait: func(ctx context.Context, w dbctx.Wait) {
			fmt.Println("waited", w.Waited, "for a slot:", w.Err) // only callers that found none free
		},
		OnPin: func(ctx context.Context, p dbctx.Pin) {
			fmt.Println("pinned a connection: new", p.New, "error", p.Err)
		},
		OnDo: func(ctx context.Context) (context.Context, func(error)) {
			fmt.Println("unit of work")
			return ctx, func(err error) { fmt.Println("done:", err) }
		},
	})
	defer pool.Close()

	err := pool.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SELECT 1")
		return err
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// unit of work
	// pinned a connection: new true error <nil>
	// done: <nil>
}

// printTracer is a pgx tracer that prints each statement with what dbscope
// sent before it.
type printTracer struct{}

func (printTracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	printStatement(conn, data.SQL)
	return ctx
}

func (printTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// In the simple_protocol exec mode the statement is the last query of the
// batch pgx is told of.
func (printTracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	q := data.Batch.QueuedQueries
	printStatement(conn, q[len(q)-1].SQL)
	return ctx
}

func (printTracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (printTracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func printStatement(conn *pgx.Conn, sql string) {
	switch p, ok := dbctx.PreludeOf(conn); {
	case ok && p.Alone:
		fmt.Printf("a round trip of dbscope's own, for the settings %v\n", p.Settings)
		return
	case ok:
		fmt.Printf("%s, after the settings %v\n", sql, p.Settings)
		return
	}
	fmt.Println(sql)
}

var exampleSetting = dbctx.NewSetting("app.example")

// A pgx tracer on the connections' config is told of every statement of a
// scope, and PreludeOf says what dbscope sent before it in its round trip:
// here the BEGIN of Atomic's transaction and the settings the context
// declares, set for that transaction.
func ExamplePreludeOf() {
	cfg, err := pgx.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	cfg.Tracer = printTracer{}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	ctx := exampleSetting.With(context.Background(), "42")
	err = pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			var v string
			return s.QueryRowContext(ctx, "SELECT current_setting('app.example')").Scan(&v)
		})
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// SELECT current_setting('app.example'), after the settings [app.example]
	// COMMIT
}
