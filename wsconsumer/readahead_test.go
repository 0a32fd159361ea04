package wsconsumer_test

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// readStyles are the ways a socket's messages are handled: inline (sync,
// async with InFlight 1) and concurrently (async with InFlight 2).
var readStyles = map[string]struct {
	style    styleFn
	inFlight int
}{
	"sync":           {wsconsumer.NewSync, 1},
	"async":          {wsconsumer.NewAsync, 1},
	"async/inflight": {wsconsumer.NewAsync, 2},
}

// A client that answers pings keeps its socket while its messages are
// handled for many ping intervals, with the messages it sent meanwhile
// waiting: one (read ahead), or more than the server reads ahead (reading
// stops: the socket is paused, and its pongs wait behind them). Then
// every message is handled, in order where InFlight is 1.
func TestPongsWhileHandling(t *testing.T) {
	t.Parallel()
	for name, rs := range readStyles {
		for _, queued := range []int{1, 40} {
			t.Run(fmt.Sprintf("%s/queued=%d", name, queued), func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				var pings atomic.Int32
				threePings := make(chan struct{})
				h := rs.style(p, wsconsumer.Consumer{
					Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
						if string(data) == "hold" {
							select {
							case <-threePings:
							case <-ctx.Done():
								return ctx.Err()
							}
						}
						return s.SendText(ctx, string(data))
					},
				}, &wsconsumer.Options{Logger: quiet(), InFlight: rs.inFlight, PingInterval: pingInterval})
				c, _, err := websocket.Dial(context.Background(), serve(t, h), &websocket.DialOptions{
					OnPingReceived: func(context.Context, []byte) bool {
						if pings.Add(1) == 3 {
							close(threePings)
						}
						return true // and pong
					},
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.CloseNow() })
				var want []string
				for range rs.inFlight {
					want = append(want, "hold")
				}
				for i := range queued {
					want = append(want, fmt.Sprint("m", i))
				}
				replies := make(chan []string, 1)
				go func() {
					var got []string
					for len(got) < len(want) {
						_, data, err := c.Read(context.Background())
						if err != nil {
							break
						}
						got = append(got, string(data))
					}
					replies <- got
				}()
				for _, m := range want {
					if err := c.Write(context.Background(), websocket.MessageText, []byte(m)); err != nil {
						t.Fatal(err)
					}
				}
				got := <-replies
				if rs.inFlight > 1 {
					slices.Sort(got)
					slices.Sort(want)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("replies %q, want %q (%d pings)", got, want, pings.Load())
				}
				if h.Len() != 1 {
					t.Fatal("the socket was closed")
				}
			})
		}
	}
}

// pingInterval is the PingInterval of TestPongsWhileHandling: a pong
// has that long to come back on a loaded machine.
const pingInterval = time.Second

// A client that goes away (cut, or a closing handshake) while a message
// is handled inline, having sent more meanwhile, is noticed: the message
// under way is canceled, what was read after it is not handled, and
// Disconnect runs.
func TestClientGoneWhileHandling(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		for _, cut := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/cut=%v", name, cut), func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				handling := make(chan struct{})
				stop := make(chan struct{})
				defer close(stop) // before the cleanups, should ctx never end
				canceled := make(chan struct{})
				disconnected := make(chan struct{})
				var mu sync.Mutex
				var handled []string
				h := style(p, wsconsumer.Consumer{
					Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
						mu.Lock()
						handled = append(handled, string(data))
						mu.Unlock()
						if string(data) == "hold" {
							close(handling)
							select {
							case <-ctx.Done():
								close(canceled)
							case <-stop:
							}
						}
						return ctx.Err()
					},
					Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { close(disconnected) },
				}, &wsconsumer.Options{Logger: quiet()})
				c := dial(t, serve(t, h))
				ctx := context.Background()
				c.Write(ctx, websocket.MessageText, []byte("hold"))
				<-handling
				for _, m := range []string{"second", "third"} {
					if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
						t.Fatal(err)
					}
				}
				if cut {
					c.CloseNow()
				} else {
					go c.Close(websocket.StatusNormalClosure, "bye")
				}
				dbtest.NoHang(t, "the cancel of the message under way, and Disconnect", func() {
					<-canceled
					<-disconnected
				})
				mu.Lock()
				defer mu.Unlock()
				if !slices.Equal(handled, []string{"hold"}) {
					t.Errorf("handled %q, want only the message under way", handled)
				}
			})
		}
	}
}

// A client that goes away while its socket is paused (reading stopped
// behind the messages it sent, or InFlight messages in flight) is noticed
// by the connection's TCP state: the messages under way are canceled and
// Disconnect runs, without waiting for them to end.
func TestClientGoneWhilePaused(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the TCP state is read on Linux only")
	}
	t.Parallel()
	for name, rs := range readStyles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			var holding sync.WaitGroup
			holding.Add(rs.inFlight)
			stop := make(chan struct{})
			defer close(stop) // before the cleanups, should ctx never end
			var canceled atomic.Int32
			disconnected := make(chan struct{})
			h := rs.style(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
					if string(data) == "hold" {
						holding.Done()
						select {
						case <-ctx.Done():
							canceled.Add(1)
						case <-stop:
						}
					}
					return ctx.Err()
				},
				Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { close(disconnected) },
			}, &wsconsumer.Options{Logger: quiet(), InFlight: rs.inFlight})
			c := dial(t, serve(t, h))
			ctx := context.Background()
			for range rs.inFlight {
				c.Write(ctx, websocket.MessageText, []byte("hold"))
			}
			holding.Wait()
			for i := range 40 { // past what the server reads ahead
				if err := c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, "m%d", i)); err != nil {
					t.Fatal(err)
				}
			}
			c.CloseNow()
			dbtest.NoHang(t, "the cancel of the messages under way, and Disconnect", func() {
				<-disconnected
			})
			if n := canceled.Load(); n != int32(rs.inFlight) {
				t.Errorf("%d messages canceled, want %d", n, rs.inFlight)
			}
		})
	}
}

// A paused socket whose client keeps sending (heartbeats that wait,
// unread, behind the messages it sent before) is not idle: IdleTimeout
// does not close it. A socket that is idle is closed, with a Debug line.
func TestIdleTimeoutAndPause(t *testing.T) {
	t.Parallel()
	for name, rs := range readStyles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			release := make(chan struct{})
			h := rs.style(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
					if string(data) == "hold" {
						select {
						case <-release:
						case <-ctx.Done():
							return ctx.Err()
						}
					}
					return nil
				},
			}, &wsconsumer.Options{Logger: quiet(), InFlight: rs.inFlight, IdleTimeout: 300 * time.Millisecond})
			c := dial(t, serve(t, h))
			ctx := context.Background()
			for range rs.inFlight {
				c.Write(ctx, websocket.MessageText, []byte("hold"))
			}
			for i := range 40 { // past what the server reads ahead: paused
				c.Write(ctx, websocket.MessageText, fmt.Appendf(nil, "m%d", i))
			}
			for range 15 { // heartbeats, over five idle timeouts
				if err := c.Write(ctx, websocket.MessageText, []byte("beat")); err != nil {
					t.Fatal(err)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if h.Len() != 1 {
				t.Fatal("a paused socket whose client sends was closed as idle")
			}
			close(release)
		})
	}
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		p, _ := dbtest.NewPool(t, nil)
		logs, logger := dbtest.NewLogs()
		h := wsconsumer.NewSync(p, wsconsumer.Consumer{}, &wsconsumer.Options{Logger: logger, IdleTimeout: 100 * time.Millisecond})
		c := dial(t, serve(t, h))
		if _, _, err := c.Read(context.Background()); websocket.CloseStatus(err) != websocket.StatusGoingAway {
			t.Fatalf("read: %v, want close 1001", err)
		}
		dbtest.Eventually(t, "the Debug line", func() bool { return logs.Count(slog.LevelDebug, "wsconsumer: idle timeout") == 1 })
	})
}

// A socket closed by the server while it is paused at the async InFlight
// limit tells Disconnect the status it was closed with, as the other
// styles do.
func TestCloseWhilePausedCode(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	holding := make(chan *wsconsumer.Session, 2)
	codes := make(chan websocket.StatusCode, 1)
	h := wsconsumer.NewAsync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			holding <- s
			<-ctx.Done()
			return nil
		},
		Disconnect: func(_ context.Context, _ *wsconsumer.Session, code websocket.StatusCode) { codes <- code },
	}, &wsconsumer.Options{Logger: quiet(), InFlight: 2})
	c := dial(t, serve(t, h))
	go func() { // the client answers the close
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				return
			}
		}
	}()
	for _, m := range []string{"a", "b", "c"} { // the third waits: paused
		c.Write(context.Background(), websocket.MessageText, []byte(m))
	}
	s := <-holding
	<-holding
	s.Close(4000, "kicked")
	dbtest.NoHang(t, "Disconnect", func() {
		if code := <-codes; code != 4000 {
			t.Errorf("Disconnect got %v, want 4000", code)
		}
	})
}

// A panic in Options.OnCallback is the callback's failure: the socket is
// closed with 1011 and Disconnect runs, also where the message runs on the
// goroutine that took the socket over after a slow one (no recover there
// but this one).
func TestOnCallbackPanic(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			disconnected := make(chan struct{})
			h := style(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
					if string(data) == "slow" {
						time.Sleep(400 * time.Millisecond) // past the read-on delay: the reader takes over
					}
					return s.SendText(ctx, string(data))
				},
				Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { close(disconnected) },
			}, &wsconsumer.Options{Logger: quiet(), OnCallback: func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
				if cb.Kind == wsconsumer.CallbackReceive && cb.Size == len("boom!") {
					panic("the hook failed")
				}
				return ctx, nil
			}})
			c := dial(t, serve(t, h))
			ctx := context.Background()
			c.Write(ctx, websocket.MessageText, []byte("slow"))
			if _, data, err := c.Read(ctx); err != nil || string(data) != "slow" {
				t.Fatalf("%q, %v", data, err)
			}
			c.Write(ctx, websocket.MessageText, []byte("boom!"))
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusInternalError {
				t.Fatalf("read: %v, want close 1011", err)
			}
			dbtest.NoHang(t, "Disconnect", func() { <-disconnected })
		})
	}
}
