package wsconsumer_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// A message that follows the one whose callback closed its socket is not
// handled: the socket is closed from the Close on, though the handshake
// goes on without the callback (a logout, then a message that must not
// run as the user who logged out). Here the message was read while the
// callback ran (the socket reads on then, see readOnAfter).
func TestCloseInCallbackHandlesNoMore(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	var mu sync.Mutex
	var got []string
	started, release := make(chan struct{}), make(chan struct{})
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			mu.Lock()
			got = append(got, string(data))
			mu.Unlock()
			if _, err := dbctx.From(ctx).ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			if string(data) == "bye" {
				close(started)
				<-release
				return s.Close(websocket.StatusNormalClosure, "bye")
			}
			return nil
		},
	}, &wsconsumer.Options{Logger: quiet()})
	url := serve(t, h)
	c, br := rawUpgrade(t, url)
	if _, err := c.Write(clientFrame(0x1, true, true, []byte("bye"))); err != nil {
		t.Fatal(err)
	}
	<-started
	// A pong comes once the socket reads on, behind the callback; the
	// second one once it has read "after".
	if _, err := c.Write(clientFrame(0x9, true, true, nil)); err != nil {
		t.Fatal(err)
	}
	readPong(t, c, br)
	frames := append(clientFrame(0x1, true, true, []byte("after")), clientFrame(0x9, true, true, nil)...)
	if _, err := c.Write(frames); err != nil {
		t.Fatal(err)
	}
	readPong(t, c, br)
	close(release)
	if code := readClose(t, c, br); code != websocket.StatusNormalClosure {
		t.Fatalf("close %v, want 1000", code)
	}
	payload := binary.BigEndian.AppendUint16(nil, uint16(websocket.StatusNormalClosure))
	if _, err := c.Write(clientFrame(0x8, true, true, payload)); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the socket ended", func() bool { return h.Len() == 0 && h.Stats().Sockets == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 {
		t.Fatalf("handled %q, want only the message that closed", got)
	}
}

// readPong reads server frames until a pong.
func readPong(t *testing.T, c net.Conn, br *bufio.Reader) {
	t.Helper()
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("no pong: %v", err)
		}
		p := make([]byte, h[1]&0x7f)
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		if h[0]&0x0f == 0xA {
			return
		}
	}
}

// An event of a group that waited for the sync Receive which closed its
// socket does not reach Event: the socket is closed, though its client
// has not answered the close yet. Not parallel: it looks for the waiting
// event in every goroutine's stack.
func TestCloseInCallbackNoEventAfter(t *testing.T) {
	p, _ := dbtest.NewPool(t, nil)
	layer := memoryLayer(t)
	receiving, release := make(chan struct{}), make(chan struct{})
	var events atomic.Int64
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			return s.Join(ctx, "room")
		},
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
			close(receiving)
			<-release
			return s.Close(websocket.StatusNormalClosure, "bye")
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			events.Add(1)
			return nil
		},
	}, &wsconsumer.Options{Logger: quiet(), Layer: layer})
	c, br := rawUpgrade(t, serve(t, h)) // answers the close only when told
	if _, err := c.Write(clientFrame(0x1, true, true, []byte("bye"))); err != nil {
		t.Fatal(err)
	}
	<-receiving
	ctx := context.Background()
	if err := layer.Send(ctx, "room", []byte("m")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the event to wait for the Receive", func() bool { return inStack("wsconsumer.(*Session).lockCallbacks(") })
	close(release)
	dbtest.Eventually(t, "the event handled", func() bool { return layer.Stats().Delivered == 1 && !inStack("wsconsumer.(*Handler).event(") })
	if n := events.Load(); n != 0 {
		t.Fatalf("Event ran on a socket its Receive had closed")
	}
	if code := readClose(t, c, br); code != websocket.StatusNormalClosure {
		t.Fatalf("close %v, want 1000", code)
	}
	payload := binary.BigEndian.AppendUint16(nil, uint16(websocket.StatusNormalClosure))
	if _, err := c.Write(clientFrame(0x8, true, true, payload)); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the socket ended", func() bool { return h.Len() == 0 && h.Stats().Sockets == 0 })
}

// A Close that comes while a callback's held replies are being written,
// to a client that reads nothing, sends no close frame once the write
// watchdog cuts the connection: Disconnect gets -1, not the status Close
// would have sent, as where Close writes the replies itself. Not
// parallel: it looks for the flush in every goroutine's stack.
func TestCloseDuringFlushCutStatus(t *testing.T) {
	p, _ := dbtest.NewPool(t, nil)
	code := make(chan websocket.StatusCode, 1)
	sess := make(chan *wsconsumer.Session, 1)
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
			sess <- s
			return s.Send(ctx, websocket.MessageBinary, make([]byte, 32<<20)) // held
		},
		Disconnect: func(_ context.Context, _ *wsconsumer.Session, c websocket.StatusCode) { code <- c },
	}, &wsconsumer.Options{Logger: quiet(), WriteTimeout: 500 * time.Millisecond})
	c := dial(t, serve(t, h)) // and never read
	if err := c.Write(context.Background(), websocket.MessageText, []byte("go")); err != nil {
		t.Fatal(err)
	}
	s := <-sess
	dbtest.Eventually(t, "the held reply being written", func() bool { return inStack("wsconsumer.(*outbox).flush(") })
	s.Close(4000, "bye")
	var got websocket.StatusCode
	dbtest.NoHang(t, "Disconnect", func() { got = <-code })
	if got != -1 {
		t.Errorf("Disconnect got %v, want -1: no close frame went out", got)
	}
}

// A sync callback that closes its socket and then fails (a Send after
// the Close, which returns ErrClosed; an error of its own) leaves the
// close it asked for alone: the client gets its status, not 1011 from a
// second close racing the first, and an ErrClosed of its own Close is
// counted as no client going away.
func TestCloseInCallbackThenFail(t *testing.T) {
	t.Parallel()
	for _, ret := range []string{"send", "error"} {
		t.Run(ret, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			code := make(chan websocket.StatusCode, 1)
			h := wsconsumer.NewSync(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
					s.Close(4000, "bye")
					if ret == "send" {
						return s.SendText(ctx, "after")
					}
					return errors.New("boom")
				},
				Disconnect: func(_ context.Context, _ *wsconsumer.Session, c websocket.StatusCode) { code <- c },
			}, &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			if err := c.Write(context.Background(), websocket.MessageText, []byte("go")); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _, err := c.Read(ctx)
			if got := websocket.CloseStatus(err); got != 4000 {
				t.Errorf("the client got %v (%v), want 4000", got, err)
			}
			var got websocket.StatusCode
			dbtest.NoHang(t, "Disconnect", func() { got = <-code })
			if got != 4000 {
				t.Errorf("Disconnect got %v, want 4000", got)
			}
			if st := h.Stats(); st.ClientGone != 0 || (ret == "send") != (st.Failed == 0) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// A close status no close frame may carry, given to Close from a sync
// callback (where the close goes on without the callback), is still an
// error of Close's, as its doc says: the connection is dropped with no
// frame, and Disconnect gets -1.
func TestCloseInCallbackBadCode(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	closeErr := make(chan error, 1)
	code := make(chan websocket.StatusCode, 1)
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
			closeErr <- s.Close(5000, "bye")
			return nil
		},
		Disconnect: func(_ context.Context, _ *wsconsumer.Session, c websocket.StatusCode) { code <- c },
	}, &wsconsumer.Options{Logger: quiet()})
	c := dial(t, serve(t, h))
	if err := c.Write(context.Background(), websocket.MessageText, []byte("go")); err != nil {
		t.Fatal(err)
	}
	if err := <-closeErr; err == nil {
		t.Errorf("Close(5000) returned nil, want an error")
	}
	var got websocket.StatusCode
	dbtest.NoHang(t, "Disconnect", func() { got = <-code })
	if got != -1 {
		t.Errorf("Disconnect got %v, want -1", got)
	}
}

// Close with 1005 (no status) sends a close frame with no status, as
// coder/websocket does, rather than drop the connection with no frame:
// the client reads 1005, Disconnect gets it, Close returns nil, as its
// doc says.
func TestCloseNoStatus(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			closeErr := make(chan error, 1)
			code := make(chan websocket.StatusCode, 1)
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					s.Go(func(context.Context) { closeErr <- s.Close(websocket.StatusNoStatusRcvd, "bye") })
					return nil
				},
				Disconnect: func(_ context.Context, _ *wsconsumer.Session, c websocket.StatusCode) { code <- c },
			}, &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusNoStatusRcvd {
				t.Errorf("the client got %v, want a close frame with no status (1005)", err)
			}
			if err := <-closeErr; err != nil {
				t.Errorf("Close: %v", err)
			}
			var got websocket.StatusCode
			dbtest.NoHang(t, "Disconnect", func() { got = <-code })
			if got != websocket.StatusNoStatusRcvd {
				t.Errorf("Disconnect got %v, want 1005", got)
			}
		})
	}
}

// A Join after the socket's Close, in either style, returns ErrClosed and
// joins nothing: it returned nil and made the closing socket a member of
// the group (its events then dropped), counted by the layer until the
// socket ended.
func TestJoinAfterClose(t *testing.T) {
	t.Parallel()
	for _, async := range []bool{false, true} {
		t.Run(map[bool]string{false: "sync", true: "async"}[async], func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			joined := make(chan error, 1)
			c := wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
					s.Close(websocket.StatusNormalClosure, "bye")
					joined <- s.Join(ctx, "g")
					return nil
				},
			}
			o := &wsconsumer.Options{Logger: quiet(), Layer: layer}
			h := wsconsumer.NewSync(p, c, o)
			if async {
				h = wsconsumer.NewAsync(p, c, o)
			}
			conn := dial(t, serve(t, h))
			send(t, conn, msg{ID: 1})
			if err := <-joined; !errors.Is(err, wsconsumer.ErrClosed) {
				t.Errorf("Join after Close: %v, want ErrClosed", err)
			}
			if st := layer.Stats(); st.Members != 0 {
				t.Errorf("Join after Close made a member: %+v", st)
			}
		})
	}
}
