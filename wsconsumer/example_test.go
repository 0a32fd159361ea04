package wsconsumer_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/coder/websocket/wsjson"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
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

// A socket joins a group and gets, through its Event callback, what anyone
// sends to it, on this instance or another (with an engine that spans
// instances, groups.NewPostgres or natslayer).
func ExampleSession_Join() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()

	joined := make(chan struct{})
	h := wsconsumer.NewSync(pool, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			s.Go(func(ctx context.Context) {
				if err := s.Join(ctx, "room.42"); err == nil {
					close(joined)
				}
			})
			return nil
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			if e.Gap {
				return nil // messages may have been lost: reload state here
			}
			// Run as a message is: in a worker slot, with the socket's scope.
			var n int
			if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT length($1::text)", string(e.Data)).Scan(&n); err != nil {
				return err
			}
			return s.SendText(ctx, fmt.Sprintf("%s (%d bytes)", e.Data, n))
		},
	}, &wsconsumer.Options{Layer: layer})
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
	<-joined
	// From a handler, a consumer, a job; inside dbctx.Atomic it goes out
	// at commit only.
	if err := layer.Send(ctx, "room.42", []byte("hello")); err != nil {
		log.Fatal(err)
	}
	_, msg, _ := c.Read(ctx)
	fmt.Println(string(msg))
	c.Close(websocket.StatusNormalClosure, "")
	// Output: hello (5 bytes)
}

var exampleTenant = dbctx.NewSetting("app.tenant")

// Connect declares what the whole socket runs with: here its tenant, which
// every statement of its callbacks (and of its group events) then runs
// with, and no other socket's.
func ExampleSession_AddValues() {
	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()

	h := wsconsumer.NewSync(pool, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			t := s.Request().URL.Query().Get("tenant") // in production: from the authenticated user
			if t == "" {
				return wsconsumer.Reject(http.StatusForbidden, "no tenant")
			}
			s.AddValues(func(ctx context.Context) context.Context { return exampleTenant.With(ctx, t) })
			return nil
		},
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
			var t string
			if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&t); err != nil {
				return err
			}
			return s.SendText(ctx, t)
		},
	}, nil)
	srv := httptest.NewServer(h)
	defer srv.Close()
	defer h.Shutdown(context.Background())

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, t := range []string{"acme", "globex"} {
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"?tenant="+t, nil)
		if err != nil {
			log.Fatal(err)
		}
		c.Write(ctx, websocket.MessageText, []byte("who am I?"))
		_, msg, _ := c.Read(ctx)
		fmt.Println(string(msg))
		c.Close(websocket.StatusNormalClosure, "")
	}
	// Output:
	// acme
	// globex
}
