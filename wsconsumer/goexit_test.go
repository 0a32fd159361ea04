package wsconsumer_test

import (
	"context"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// A callback that ends its goroutine with runtime.Goexit (t.FailNow in a
// test's consumer) rather than return is a callback's failure, as a panic
// is: its socket is closed with 1011 (Connect's refused with 500), its
// Disconnect runs, it is counted and logged, and the handler holds
// nothing of it (no registered socket, no goroutine, no slot), in both
// styles and whichever goroutine ran it (the one that read the socket, a
// reader that read on, a worker, the member's for an Event). Where
// Disconnect itself ends its goroutine, the connection is closed all the
// same; so where Options.OnCallback ends it.
func TestGoexitInCallbacks(t *testing.T) {
	t.Parallel()
	type setup struct {
		style    styleFn
		inFlight int
	}
	setups := map[string]setup{
		"sync":            {wsconsumer.NewSync, 0},
		"async":           {wsconsumer.NewAsync, 0},
		"async/inflight2": {wsconsumer.NewAsync, 2},
	}
	for name, st := range setups {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			var disconnects atomic.Int32
			h := st.style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					if s.Request().URL.Query().Has("connect") {
						runtime.Goexit()
					}
					return s.Join(ctx, "g")
				},
				Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
					switch string(data) {
					case "exit":
						runtime.Goexit()
					case "exit-in-do":
						dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
							if _, err := sc.ExecContext(ctx, "SELECT 1"); err != nil {
								return err
							}
							runtime.Goexit()
							return nil
						})
					case "slow-exit":
						// Past readOnAfter: a reader reads on, and the
						// socket goes on on another goroutine after.
						time.Sleep(400 * time.Millisecond)
						runtime.Goexit()
					case "slow":
						time.Sleep(400 * time.Millisecond)
					}
					return s.Send(ctx, websocket.MessageText, data)
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					if string(e.Data) == "exit" && s.Request().URL.Query().Has("event") {
						runtime.Goexit()
					}
					return s.Send(ctx, websocket.MessageText, e.Data)
				},
				Disconnect: func(ctx context.Context, s *wsconsumer.Session, _ websocket.StatusCode) {
					disconnects.Add(1)
					if s.Request().URL.Query().Has("disconnect") {
						runtime.Goexit()
					}
				},
			}, &wsconsumer.Options{Logger: quiet(), Layer: layer, InFlight: st.inFlight,
				OnCallback: func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
					if cb.Kind == wsconsumer.CallbackReceive && cb.Session.Request().URL.Query().Has("hook") {
						runtime.Goexit()
					}
					return ctx, nil
				}})
			url := serve(t, h)

			want := int32(0)
			closed := func(c *websocket.Conn, what string) {
				t.Helper()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				for {
					_, data, err := c.Read(ctx)
					if err == nil {
						continue // an event or reply sent before
					}
					if code := websocket.CloseStatus(err); code != websocket.StatusInternalError {
						t.Fatalf("%s: got %v (%d), want close 1011", what, err, code)
					}
					_ = data
					return
				}
			}
			for _, m := range []string{"exit", "exit-in-do", "slow-exit", "slow"} {
				c := dial(t, url)
				if m == "slow" {
					// A long message, then Goexit in the Disconnect of a
					// socket the reader took over.
					c2 := dial(t, url+"?disconnect")
					send := func(c *websocket.Conn, m string) {
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						defer cancel()
						if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
							t.Fatal(err)
						}
						if _, _, err := c.Read(ctx); err != nil {
							t.Fatal(err)
						}
					}
					send(c2, "slow")
					c2.Close(websocket.StatusNormalClosure, "")
					want++
					c.CloseNow()
					want++
					continue
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
					t.Fatal(err)
				}
				cancel()
				closed(c, m)
				want++
			}
			// Options.OnCallback that ends the goroutine of a Receive.
			c := dial(t, url+"?hook")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
				t.Fatal(err)
			}
			closed(c, "OnCallback")
			want++
			// An Event that ends the member's goroutine.
			c = dial(t, url+"?event")
			dbtest.Eventually(t, "joined", func() bool { return h.Len() >= 1 })
			if err := layer.Send(context.Background(), "g", []byte("exit")); err != nil {
				t.Fatal(err)
			}
			closed(c, "event")
			want++
			// Connect: refused with 500.
			if _, resp, err := websocket.Dial(context.Background(), url+"?connect", nil); err == nil || resp == nil || resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("Goexit in Connect: %v %v, want 500", err, resp)
			}
			dbtest.Eventually(t, "every socket ended", func() bool {
				return disconnects.Load() == want && h.Len() == 0 && h.Stats().Sockets == 0
			})
			if got := h.Stats().Failed; got != 7 {
				t.Errorf("Stats.Failed = %d, want 7 (Receive 3, OnCallback, Event, Connect, Disconnect)", got)
			}
			c = dial(t, url) // still serving
			if err := c.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, data, err := c.Read(ctx); err != nil || string(data) != "hi" {
				t.Fatalf("another socket: %q %v", data, err)
			}
		})
	}
}
