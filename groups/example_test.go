package groups_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"os"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
)

// Messages past NOTIFY's 7,999 bytes go through a table, up to
// MaxPayload. Where the application's role may not create the table, New
// says so with ErrPayloadTable: create it beforehand with the DDL of
// NewPostgres's doc. (Not run by go test: it needs a connection straight
// to PostgreSQL for the listener, and leaves the table behind.)
func ExamplePostgresOptions_largeMessages() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL")) // through PgBouncer, say
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{TransactionPooling: true})
	defer pool.Close()

	layer, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{
		ListenDSN:     os.Getenv("LISTEN_DATABASE_URL"), // straight to PostgreSQL
		MaxPayload:    4 << 20,
		PayloadTable:  "app.group_payloads",
		PayloadMaxAge: time.Minute,
	}), nil)
	if errors.Is(err, groups.ErrPayloadTable) {
		log.Fatalf("%v: run NewPostgres's DDL as the schema's owner", err)
	}
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()

	// A report of 1 MiB: one INSERT and a NOTIFY of its reference, in
	// the transaction; each instance reads it once, at commit.
	report := make([]byte, 1<<20)
	err = pool.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			// … the rows the report tells of …
			return layer.Send(ctx, "reports", report)
		})
	})
	if err != nil {
		log.Fatal(err)
	}
}
