package wsconsumer_test

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// Options.OnCallback's done is called, once and with an error, for a
// callback that ends its goroutine (runtime.Goexit), as for one that
// panics: a tracer's span (dbotel's) ends, a meter's in-flight count
// comes down.
func TestGoexitCallbackDone(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			var mu sync.Mutex
			started, done := map[wsconsumer.CallbackKind]int{}, map[wsconsumer.CallbackKind][]error{}
			h := style(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
					runtime.Goexit()
					return nil
				},
				Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) {},
			}, &wsconsumer.Options{Logger: quiet(), OnCallback: func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
				mu.Lock()
				started[cb.Kind]++
				mu.Unlock()
				return ctx, func(err error) {
					mu.Lock()
					done[cb.Kind] = append(done[cb.Kind], err)
					mu.Unlock()
				}
			}})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusInternalError {
				t.Fatalf("%v, want 1011", err)
			}
			dbtest.Eventually(t, "Disconnect's done", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(done[wsconsumer.CallbackDisconnect]) == 1
			})
			mu.Lock()
			defer mu.Unlock()
			if got := done[wsconsumer.CallbackReceive]; started[wsconsumer.CallbackReceive] != 1 || len(got) != 1 || got[0] == nil {
				t.Fatalf("Receive: started %d, done with %v; want done once with an error", started[wsconsumer.CallbackReceive], got)
			}
		})
	}
}
