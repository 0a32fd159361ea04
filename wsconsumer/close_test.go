package wsconsumer_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// Shutdown returns once its context ends, whatever the callbacks still
// under way do: a Disconnect that does not return holds no Shutdown.
func TestShutdownReturnsAtDeadline(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			release := make(chan struct{})
			defer close(release) // before the cleanups, which wait for Disconnect
			entered := make(chan struct{})
			h := style(p, wsconsumer.Consumer{
				Disconnect: func(ctx context.Context, s *wsconsumer.Session, code websocket.StatusCode) {
					close(entered)
					<-release // neither returns nor looks at ctx
				},
			}, &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			go c.Read(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			dbtest.NoHang(t, "Shutdown", func() {
				if err := h.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Shutdown: %v, want context.DeadlineExceeded", err)
				}
			})
			<-entered
		})
	}
}

// A socket the server closes (Session.Close from another goroutine, as an
// admin's kick or Shutdown does) has its context canceled: the callback
// under way, waiting on it, returns, and Disconnect runs.
func TestServerCloseCancelsCallback(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			sessions := make(chan *wsconsumer.Session, 1)
			handling := make(chan struct{})
			disconnected := make(chan struct{})
			stop := make(chan struct{})
			defer close(stop) // before the cleanups, should ctx never end
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					sessions <- s
					return nil
				},
				Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
					close(handling)
					select {
					case <-ctx.Done():
					case <-stop:
					}
					return ctx.Err()
				},
				Disconnect: func(ctx context.Context, s *wsconsumer.Session, code websocket.StatusCode) {
					close(disconnected)
				},
			}, &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			go func() {
				for {
					if _, _, err := c.Read(context.Background()); err != nil {
						return
					}
				}
			}()
			if err := c.Write(context.Background(), websocket.MessageText, []byte("work")); err != nil {
				t.Fatal(err)
			}
			s := <-sessions
			<-handling
			dbtest.NoHang(t, "the callback and Disconnect", func() {
				s.Close(websocket.StatusPolicyViolation, "kicked")
				<-disconnected
			})
		})
	}
}

// An Event callback's failure is logged as the event's, as OnCallback
// tells it, not as a message's.
func TestEventFailureLoggedAsEvent(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			logs, logger := dbtest.NewLogs()
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					s.Go(func(ctx context.Context) {
						s.Join(ctx, "room")
						s.SendText(ctx, "joined")
					})
					return nil
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					return errors.New("the event's handler failed")
				},
			}, &wsconsumer.Options{Logger: logger, Layer: layer})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if _, _, err := c.Read(ctx); err != nil {
				t.Fatal(err)
			}
			if err := layer.Send(ctx, "room", []byte("x")); err != nil {
				t.Fatal(err)
			}
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusInternalError {
				t.Fatalf("the client got %v, want 1011", err)
			}
			dbtest.Eventually(t, "the failure logged", func() bool { return len(logs.AtLeast(slog.LevelError)) > 0 })
			for _, r := range logs.AtLeast(slog.LevelError) {
				if r.Attrs["callback"] != "event" {
					t.Errorf("an Event callback's failure logged with callback=%q: %+v", r.Attrs["callback"], r)
				}
			}
		})
	}
}

// An event of a group joined in Connect reaches the socket, however soon
// it comes: here it is sent from Connect itself, before the socket is
// accepted.
func TestEventBeforeAccept(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					if err := s.Join(ctx, "room"); err != nil {
						return err
					}
					return layer.Send(ctx, "room", []byte("early"))
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					return s.Send(ctx, websocket.MessageText, e.Data)
				},
			}, &wsconsumer.Options{Logger: quiet(), Layer: layer})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, data, err := c.Read(ctx)
			if err != nil || string(data) != "early" {
				t.Fatalf("the client read %q, %v; want the event sent from Connect", data, err)
			}
		})
	}
}

// What a sync callback's Send accepted (returned nil for) reaches the
// client before the close frame, however the socket is closed while the
// reply is held: by the Receive itself, by an Event after its first
// statement, or by Shutdown while the Receive still runs. The client
// reads the reply first, then the close.
func TestSendThenClose(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"receive", "event", "shutdown"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			sent := make(chan error, 1)
			h := wsconsumer.NewSync(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
					if how == "event" {
						if err := s.Join(ctx, "g"); err != nil {
							return err
						}
						return s.SendText(ctx, "joined")
					}
					sent <- s.SendText(ctx, "reply")
					if how == "receive" {
						s.Close(websocket.StatusNormalClosure, "done")
						return nil
					}
					<-ctx.Done() // Shutdown's close, while the reply is held
					return nil
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					if err := selectOne(ctx); err != nil { // sends held from here on
						return err
					}
					sent <- s.SendText(ctx, "reply")
					s.Close(websocket.StatusNormalClosure, "done")
					return nil
				},
			}, &wsconsumer.Options{Logger: quiet(), Layer: layer})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := c.Write(ctx, websocket.MessageText, []byte("go")); err != nil {
				t.Fatal(err)
			}
			read := make(chan string, 2)
			go func() {
				for {
					_, data, err := c.Read(ctx)
					if err != nil {
						read <- "close " + websocket.CloseStatus(err).String()
						return
					}
					read <- string(data)
				}
			}()
			switch how {
			case "event":
				if got := <-read; got != "joined" {
					t.Fatalf("got %q, want joined", got)
				}
				if err := layer.Send(ctx, "g", []byte("x")); err != nil {
					t.Fatal(err)
				}
			case "shutdown":
				if err := <-sent; err != nil {
					t.Fatalf("Send: %v", err)
				}
				sent <- nil
				if err := h.Shutdown(ctx); err != nil {
					t.Fatal(err)
				}
			}
			// The reply, or what came instead where the callback failed
			// before its Send (rather than wait for that Send for ever).
			var got string
			select {
			case err := <-sent:
				if err != nil {
					t.Fatalf("Send: %v", err)
				}
				got = <-read
			case got = <-read:
			}
			if got != "reply" {
				t.Fatalf("Send returned nil for a reply; the client got %q first", got)
			}
			if got := <-read; !strings.HasPrefix(got, "close ") {
				t.Fatalf("after the reply the client got %q, want the close", got)
			}
		})
	}
}

// A client that leaves during the upgrade, while Connect runs its query,
// has the query canceled, as a canceled request's is: the socket's
// context, which Connect gets, ends with the request's until the upgrade.
// Nothing is accepted, and it counts as a client gone.
func TestConnectClientGone(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, env := dbtest.NewPool(t, nil)
			connected := make(chan error, 1)
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					err := dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
						_, err := sc.ExecContext(ctx, "SELECT pg_sleep(45)")
						return err
					})
					connected <- err
					return err
				},
			}, &wsconsumer.Options{Logger: quiet()})
			url := serve(t, h)
			ctx, cancel := context.WithCancel(context.Background())
			dialed := make(chan struct{})
			go func() {
				defer close(dialed)
				if c, _, err := websocket.Dial(ctx, url, nil); err == nil {
					c.CloseNow()
				}
			}()
			dbtest.Eventually(t, "Connect's query", func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") == 1 })
			cancel() // the client hangs up mid-handshake
			<-dialed
			select {
			case err := <-connected:
				if err == nil {
					t.Fatal("Connect's query returned nil")
				}
			case <-time.After(30 * time.Second): // the query would run 45s
				t.Fatal("the client left the upgrade; Connect's query still runs")
			}
			dbtest.Eventually(t, "the socket gone", func() bool { return h.Stats().Sockets == 0 })
			if st := h.Stats(); st.Accepted != 0 || st.ClientGone != 1 || st.Failed != 0 {
				t.Errorf("Stats %+v, want ClientGone 1, nothing accepted or failed", st)
			}
		})
	}
}

// At its deadline Shutdown cancels the Connects under way, as it cancels
// the work of the sockets it closes, and their sockets are not accepted
// (503) once Connect returns: none outlives Shutdown.
func TestShutdownDeadlineDuringConnect(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		for _, returns := range []string{"error", "nil"} {
			t.Run(name+"/"+returns, func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				connecting := make(chan struct{})
				ended, stop := make(chan struct{}), make(chan struct{})
				h := style(p, wsconsumer.Consumer{
					Connect: func(ctx context.Context, s *wsconsumer.Session) error {
						close(connecting)
						select {
						case <-ctx.Done():
							close(ended)
						case <-stop:
						}
						if returns == "nil" {
							return nil // accepts all the same
						}
						return ctx.Err()
					},
				}, &wsconsumer.Options{Logger: quiet()})
				srv := httptestServer(h)
				defer srv.Close()
				defer close(stop) // before srv.Close, should ctx never end
				status := make(chan int, 1)
				go func() {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					defer cancel()
					c, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
					if err == nil {
						c.CloseNow()
					}
					if resp == nil {
						status <- 0
						return
					}
					status <- resp.StatusCode
				}()
				<-connecting
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				if err := h.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Shutdown: %v, want context.DeadlineExceeded", err)
				}
				dbtest.NoHang(t, "Connect's context to end", func() { <-ended })
				if got := <-status; got != http.StatusServiceUnavailable {
					t.Errorf("the upgrade got %d, want 503", got)
				}
				dbtest.NoHang(t, "the socket to end", func() { h.Shutdown(context.Background()) })
				if st := h.Stats(); st.Accepted != 0 {
					t.Errorf("Stats %+v: accepted after Shutdown's deadline", st)
				}
			})
		}
	}
}

// A close that writes held replies first (IdleTimeout's, here, which
// marks the socket closing before it closes) is bounded by the write
// timeout: a client that reads nothing has its socket closed, and
// Disconnect runs, rather than the close waiting on the write for ever.
func TestCloseWithHeldRepliesStalls(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	disconnected := make(chan struct{})
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
			if err := s.Send(ctx, websocket.MessageBinary, make([]byte, 32<<20)); err != nil { // held
				return err
			}
			<-ctx.Done() // past IdleTimeout
			return nil
		},
		Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { close(disconnected) },
	}, &wsconsumer.Options{Logger: quiet(), IdleTimeout: 200 * time.Millisecond, WriteTimeout: time.Second})
	c := dial(t, serve(t, h)) // and never read
	if err := c.Write(context.Background(), websocket.MessageText, []byte("go")); err != nil {
		t.Fatal(err)
	}
	dbtest.NoHang(t, "the socket to end", func() { <-disconnected })
}

// A close whose held replies could not be written (a client that reads
// nothing: the write watchdog, or Shutdown's deadline, cuts the
// connection) sends no close frame: Disconnect gets -1, a connection cut,
// not the status Close or Shutdown would have sent (4000, 1001).
func TestHeldRepliesCutStatus(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"Close", "Shutdown"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			code := make(chan websocket.StatusCode, 1)
			held := make(chan struct{})
			opts := &wsconsumer.Options{Logger: quiet(), WriteTimeout: 500 * time.Millisecond}
			if how == "Shutdown" {
				opts.WriteTimeout = time.Minute
			}
			h := wsconsumer.NewSync(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
					if err := s.Send(ctx, websocket.MessageBinary, make([]byte, 32<<20)); err != nil { // held
						return err
					}
					if how == "Close" {
						s.Close(4000, "bye")
						return nil
					}
					close(held)
					<-ctx.Done()
					return nil
				},
				Disconnect: func(_ context.Context, _ *wsconsumer.Session, c websocket.StatusCode) { code <- c },
			}, opts)
			c := dial(t, serve(t, h)) // and never read
			if err := c.Write(context.Background(), websocket.MessageText, []byte("go")); err != nil {
				t.Fatal(err)
			}
			if how == "Shutdown" {
				<-held
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				h.Shutdown(ctx)
			}
			var got websocket.StatusCode
			dbtest.NoHang(t, "Disconnect", func() { got = <-code })
			if got != -1 {
				t.Errorf("Disconnect got %v, want -1: no close frame went out", got)
			}
		})
	}
}
