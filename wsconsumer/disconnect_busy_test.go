package wsconsumer_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// Disconnect runs whatever closed the socket, also while every worker
// slot is taken: in the sync style its slot is taken at its first
// statement, as an Event's, so a Disconnect that cleans up what the
// process holds (a presence map, a counter) runs under overload, and one
// that queries sees the pool's refusal as its statement's error. It was
// skipped ("Disconnect not run: busy") where the pool had no slot within
// WaitTimeout.
func TestDisconnectRunsWhenPoolBusy(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: 50 * time.Millisecond})
			type ran struct {
				code websocket.StatusCode
				err  error
			}
			done := make(chan ran, 1)
			h := style(p, wsconsumer.Consumer{
				Disconnect: func(ctx context.Context, s *wsconsumer.Session, code websocket.StatusCode) {
					// In memory first, then the database.
					err := dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
						_, err := sc.ExecContext(ctx, "SELECT 1")
						return err
					})
					done <- ran{code, err}
				},
			}, &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			ctx, hold := p.Scope(context.Background())
			if err := hold.Reserve(ctx); err != nil {
				t.Fatal(err)
			}
			c.Close(websocket.StatusNormalClosure, "bye")
			select {
			case r := <-done:
				if r.code != websocket.StatusNormalClosure {
					t.Errorf("Disconnect got %v, want 1000", r.code)
				}
				if !errors.Is(r.err, dbctx.ErrBusy) {
					t.Errorf("Disconnect's statement: %v, want ErrBusy", r.err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Disconnect did not run while the pool was full")
			}
			hold.End()
			dbtest.Eventually(t, "the socket to end", func() bool { return h.Len() == 0 })
		})
	}
}
