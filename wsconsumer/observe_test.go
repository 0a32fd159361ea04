package wsconsumer_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

type cbKey struct{}

// OnCallback runs around every callback of a socket, in both styles: the
// callback and the wait for its slot get the context it returns, and done
// is told of the outcome once the slot is released.
func TestOnCallback(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var started, ended []string
			var pinnedIn []any
			var g *groupServer
			opts := &wsconsumer.Options{OnCallback: func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
				if cb.Session == nil {
					t.Errorf("%v: no session", cb.Kind)
				}
				what := cb.Kind.String()
				switch cb.Kind {
				case wsconsumer.CallbackReceive:
					if cb.MessageType != websocket.MessageText || cb.Size != len("ping") {
						t.Errorf("receive told %+v", cb)
					}
				case wsconsumer.CallbackEvent:
					what += " " + cb.Event.Group + " " + string(cb.Event.Data)
				}
				mu.Lock()
				started = append(started, what)
				mu.Unlock()
				return context.WithValue(ctx, cbKey{}, what), func(err error) {
					if err != nil {
						t.Errorf("%s: %v", what, err)
					}
					// In the sync style nothing else of the socket runs
					// meanwhile (async callbacks may overlap).
					if name == "sync" && (cb.Kind == wsconsumer.CallbackReceive || cb.Kind == wsconsumer.CallbackEvent) {
						if st := g.pool.Stats(); st.InUse != 0 {
							t.Errorf("%s: done before the slot was released: %+v", what, st)
						}
					}
					mu.Lock()
					ended = append(ended, what)
					mu.Unlock()
				}
			}}
			g = newGroupServer(t, style, opts, dbctx.Options{OnPin: func(ctx context.Context, _ dbctx.Pin) {
				mu.Lock()
				pinnedIn = append(pinnedIn, ctx.Value(cbKey{}))
				mu.Unlock()
			}})
			c := g.dial(t, "room")
			if err := c.Write(context.Background(), websocket.MessageText, []byte("ping")); err != nil {
				t.Fatal(err)
			}
			if got := readText(t, c); got != "pong" {
				t.Fatalf("got %q", got)
			}
			if err := g.layer.Send(context.Background(), "room", []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if got := readText(t, c); got != "event room hi 3" {
				t.Fatalf("got %q", got)
			}
			c.Close(websocket.StatusNormalClosure, "")
			want := []string{"connect", "receive", "event room hi"} // no Disconnect: nothing runs
			dbtest.Eventually(t, "every callback to be done", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(ended) == len(want)
			})
			mu.Lock()
			defer mu.Unlock()
			if !slices.Equal(started, want) || !slices.Equal(ended, want) {
				t.Fatalf("started %q, ended %q; want %q", started, ended, want)
			}
			// The receive's and the event's statements pinned with the
			// hook's context.
			if !slices.Equal(pinnedIn, []any{"receive", "event room hi"}) {
				t.Fatalf("pins saw the contexts %q", pinnedIn)
			}
		})
	}
}

// Disconnect is told of with its close status.
func TestOnCallbackDisconnect(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	told := make(chan wsconsumer.Callback, 1)
	ran := make(chan any, 1)
	h := wsconsumer.NewAsync(p, wsconsumer.Consumer{
		Disconnect: func(ctx context.Context, _ *wsconsumer.Session, _ websocket.StatusCode) { ran <- ctx.Value(cbKey{}) },
	}, &wsconsumer.Options{Logger: quiet(), OnCallback: func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
		told <- cb
		return context.WithValue(ctx, cbKey{}, "hooked"), nil
	}})
	c := dial(t, serve(t, h))
	c.Close(websocket.StatusGoingAway, "")
	if cb := <-told; cb.Kind != wsconsumer.CallbackDisconnect || cb.Code != websocket.StatusGoingAway {
		t.Fatalf("told %+v", cb)
	}
	if v := <-ran; v != "hooked" {
		t.Fatalf("Disconnect got %v from its context", v)
	}
}
