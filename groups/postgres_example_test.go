package groups_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	_ "github.com/jackc/pgx/v5/stdlib"
)

// Two instances of a service share groups through PostgreSQL: a message
// sent inside a transaction on one reaches the members on the other at
// commit, and one sent by a transaction that rolls back reaches nobody.
func ExampleNewPostgres() {
	dsn := os.Getenv("DATABASE_URL")           // through PgBouncer, say
	listen := os.Getenv("LISTEN_DATABASE_URL") // straight to PostgreSQL: a LISTEN needs a session of its own
	instance := func() (*sql.DB, *dbctx.Pool, *groups.Layer) {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			log.Fatal(err)
		}
		pool := dbctx.New(db, nil)
		layer, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{
			ListenDSN: listen,
			Namespace: "example-newpostgres", // apart from other apps on this database
		}), nil)
		if err != nil {
			log.Fatal(err)
		}
		return db, pool, layer
	}
	dbA, poolA, layerA := instance()
	defer dbA.Close()
	defer poolA.Close()
	defer layerA.Close()
	dbB, poolB, layerB := instance()
	defer dbB.Close()
	defer poolB.Close()
	defer layerB.Close()

	got := make(chan groups.Event, 10)
	member := layerB.NewMember(func(e groups.Event) { got <- e }, nil)
	defer member.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := member.Join(ctx, "room.7"); err != nil { // the listener has LISTENed when Join returns
		log.Fatal(err)
	}

	ctx, scope := poolA.Scope(ctx)
	defer scope.End()
	send := func(text string, fail error) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			// ... the transaction's writes ...
			if err := layerA.Send(ctx, "room.7", []byte(text)); err != nil {
				return err
			}
			return fail
		})
	}
	if err := send("rolled back", errors.New("the write failed")); err == nil {
		log.Fatal("want the transaction's error")
	}
	if err := send("committed", nil); err != nil {
		log.Fatal(err)
	}
	select {
	case e := <-got:
		fmt.Printf("%s: %s\n", e.Group, e.Data)
	case <-ctx.Done():
		log.Fatal("nothing arrived: is LISTEN_DATABASE_URL straight to PostgreSQL?")
	}
	// Output: room.7: committed
}
