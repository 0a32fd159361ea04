package wsconsumer_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/wsconsumer"
	_ "github.com/jackc/pgx/v5/stdlib"
)

type Ask struct {
	N int `json:"n"`
}

type Answer struct {
	N      int `json:"n"`
	Square int `json:"square"`
}

// The sync style: each message is handled in a worker slot with the
// socket's scope, so the handler queries dbctx.From(ctx) directly.
func ExampleNewSync() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	h := wsconsumer.NewSync(pool, wsconsumer.JSON(wsconsumer.JSONConsumer[Ask]{
		Receive: func(ctx context.Context, s *wsconsumer.Session, a Ask) error {
			var sq int
			if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT $1::int * $1::int", a.N).Scan(&sq); err != nil {
				return err // 1011 to the client, the detail to the log
			}
			return s.SendJSON(ctx, Answer{N: a.N, Square: sq})
		},
	}), nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	wsjson.Write(ctx, c, Ask{N: 7})
	var ans Answer
	wsjson.Read(ctx, c, &ans)
	fmt.Println(ans.N, ans.Square)
	c.Close(websocket.StatusNormalClosure, "")
	// Output: 7 49
}

// The async style: callbacks hold no slot and reach the database through
// dbctx.Do; a goroutine started with Session.Go pushes events until the
// socket disconnects.
func ExampleNewAsync() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	h := wsconsumer.NewAsync(pool, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			s.Go(func(ctx context.Context) {
				// Woken by an event (a tick here), read the database in Do.
				now, err := dbctx.DoValue(ctx, func(ctx context.Context, sc *dbctx.Scope) (string, error) {
					var v string
					err := sc.QueryRowContext(ctx, "SELECT 'hello from the database'").Scan(&v)
					return v, err
				})
				if err == nil {
					s.SendText(ctx, now)
				}
			})
			return nil
		},
	}, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	_, msg, _ := c.Read(ctx)
	fmt.Println(string(msg))
	c.Close(websocket.StatusNormalClosure, "")
	// Output: hello from the database
}
