package wsconsumer_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// lookup answers {"id":k} with the name the database gives k, through
// the scope (sync) or dbctx.Do (async). Op "sleep" sleeps in the database
// inside a transaction, after a first statement (so that a kill fails it
// rather than run it again); "panic" panics; "direct" uses the handle
// directly.
func lookup(ctx context.Context, s *wsconsumer.Session, m msg) error {
	var name string
	query := func(ctx context.Context, sc *dbctx.Scope) error {
		switch m.Op {
		case "sleep":
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := sc.ExecContext(ctx, "SELECT 1"); err != nil {
					return err
				}
				_, err := sc.ExecContext(ctx, "SELECT pg_sleep(30)")
				return err
			})
		case "panic":
			panic("boom")
		case "fail":
			return errors.New("secret internal detail")
		}
		return sc.QueryRowContext(ctx, "SELECT 'item-' || $1::int", m.ID).Scan(&name)
	}
	var err error
	if m.Op == "direct" {
		err = query(ctx, dbctx.From(ctx))
	} else {
		err = dbctx.Do(ctx, query) // on the callback's scope in the sync style
	}
	if errors.Is(err, dbctx.ErrBusy) || m.Op == "fail" {
		return err
	}
	var pe *dbctx.PanicError
	if errors.As(err, &pe) {
		panic(pe.Value)
	}
	if err != nil {
		return s.SendJSON(ctx, msg{ID: m.ID, Error: err.Error()})
	}
	return s.SendJSON(ctx, msg{ID: m.ID, Name: name})
}

type styleFn func(*dbctx.Pool, wsconsumer.Consumer, *wsconsumer.Options) *wsconsumer.Handler

var styles = map[string]styleFn{"sync": wsconsumer.NewSync, "async": wsconsumer.NewAsync}

func lookupHandler(p *dbctx.Pool, style styleFn, opts *wsconsumer.Options) *wsconsumer.Handler {
	if opts == nil {
		opts = &wsconsumer.Options{}
	}
	opts.Logger = quiet()
	return style(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{Receive: lookup}), opts)
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			c := dial(t, serve(t, lookupHandler(p, style, nil)))
			for i := range 50 {
				send(t, c, msg{ID: i})
			}
			for i := range 50 { // in order
				if r, _ := recv(t, c); r.ID != i || r.Name != fmt.Sprint("item-", i) {
					t.Fatalf("reply %d: %+v", i, r)
				}
			}
			// Between messages an idle socket holds nothing (the reply
			// leaves before the receive's boundary, hence the wait).
			dbtest.Eventually(t, "the idle socket to hold nothing", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Pinned == 0
			})
		})
	}
}

func TestAsyncDirectUse(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	c := dial(t, serve(t, lookupHandler(p, wsconsumer.NewAsync, nil)))
	if r := roundTrip(t, c, msg{ID: 1, Op: "direct"}); r.Error != dbctx.ErrAsyncContext.Error() {
		t.Fatalf("direct use in async style: %+v", r)
	}
	if r := roundTrip(t, c, msg{ID: 2}); r.Name != "item-2" {
		t.Fatalf("through Do: %+v", r)
	}
}

func TestConnectReject(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	url := serve(t, wsconsumer.NewSync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			if s.Request().URL.Query().Get("token") != "ok" {
				return wsconsumer.Reject(http.StatusForbidden, "forbidden")
			}
			var one int
			return dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&one)
		},
	}, &wsconsumer.Options{Logger: quiet()}))
	_, resp, err := websocket.Dial(context.Background(), url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("got %v, %v; want 403", err, resp)
	}
	dial(t, url+"?token=ok")
}

// A backend killed between two messages costs the next one nothing; one
// killed mid-query fails that message only.
func TestBackendKilled(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, env := dbtest.NewPool(t, nil)
			c := dial(t, serve(t, lookupHandler(p, style, nil)))
			for i := range 5 {
				if r := roundTrip(t, c, msg{ID: i}); r.Name == "" {
					t.Fatalf("message %d: %+v", i, r)
				}
				env.Terminate(t)
			}
			killed := dbtest.KillWhenActive(t, env, "SELECT pg_sleep")
			r := roundTrip(t, c, msg{ID: 9, Op: "sleep"})
			if n := <-killed; n != 1 {
				t.Fatalf("killed %d backends, want 1", n)
			}
			if r.Error == "" {
				t.Fatalf("killed mid-query: %+v", r)
			}
			if r := roundTrip(t, c, msg{ID: 10}); r.Name != "item-10" {
				t.Fatalf("after the kill: %+v", r)
			}
		})
	}
}

// A client that vanishes mid-query cancels the query and frees the slot
// and connection.
func TestClientVanishes(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, env := dbtest.NewPool(t, nil)
			var disconnected atomic.Int32
			h := style(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
				Receive:    lookup,
				Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { disconnected.Add(1) },
			}), &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			send(t, c, msg{ID: 1, Op: "sleep"})
			dbtest.Eventually(t, "the query", func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") == 1 })
			c.CloseNow()
			dbtest.Eventually(t, "the query to stop", func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") == 0 })
			dbtest.Eventually(t, "disconnect", func() bool { return disconnected.Load() == 1 && h.Len() == 0 })
			dbtest.Eventually(t, "the slot to free", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Pinned == 0
			})
		})
	}
}

func TestCloseCodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		send func(c *websocket.Conn) error
		want websocket.StatusCode
	}{
		{"oversized", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageText, make([]byte, 2048))
		}, websocket.StatusMessageTooBig},
		{"invalid JSON", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageText, []byte("{nope"))
		}, websocket.StatusInvalidFramePayloadData},
		{"binary to JSON", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageBinary, []byte(`{"id":1}`))
		}, websocket.StatusUnsupportedData},
		{"handler error", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageText, []byte(`{"id":1,"op":"fail"}`))
		}, websocket.StatusInternalError},
		{"panic", func(c *websocket.Conn) error {
			return c.Write(context.Background(), websocket.MessageText, []byte(`{"id":1,"op":"panic"}`))
		}, websocket.StatusInternalError},
	}
	for name, style := range styles {
		for _, tc := range cases {
			t.Run(name+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				url := serve(t, lookupHandler(p, style, &wsconsumer.Options{ReadLimit: 1024}))
				c := dial(t, url)
				if err := tc.send(c); err != nil {
					t.Fatal(err)
				}
				_, code := recv(t, c)
				if code != tc.want {
					t.Fatalf("closed with %v, want %v", code, tc.want)
				}
				// The server keeps serving.
				if r := roundTrip(t, dial(t, url), msg{ID: 3}); r.Name != "item-3" {
					t.Fatalf("after the close: %+v", r)
				}
			})
		}
	}
}

// Internal errors never reach the client: the close reason is generic.
func TestNoDetailToClient(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	c := dial(t, serve(t, lookupHandler(p, wsconsumer.NewSync, nil)))
	send(t, c, msg{ID: 1, Op: "fail"})
	_, _, err := c.Read(context.Background())
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.StatusInternalError || ce.Reason != "internal error" {
		t.Fatalf("got %v", err)
	}
}

func TestInvalidReply(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	c := dial(t, serve(t, wsconsumer.NewSync(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
		Receive: lookup,
		Invalid: func(ctx context.Context, s *wsconsumer.Session, data []byte, err error) error {
			return s.SendJSON(ctx, msg{Error: "invalid message"})
		},
	}), nil)))
	c.Write(context.Background(), websocket.MessageText, []byte("{nope"))
	if r, _ := recv(t, c); r.Error != "invalid message" {
		t.Fatalf("got %+v", r)
	}
	if r := roundTrip(t, c, msg{ID: 4}); r.Name != "item-4" {
		t.Fatalf("after the invalid message: %+v", r)
	}
}

// A client that never reads is closed after the write timeout; others
// are unaffected.
func TestSlowReader(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	flood := make(chan error, 1)
	h := wsconsumer.NewSync(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
		Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
			if m.Op != "flood" {
				return lookup(ctx, s, m)
			}
			s.Go(func(ctx context.Context) {
				big := make([]byte, 64<<10)
				for {
					if err := s.Send(ctx, websocket.MessageBinary, big); err != nil {
						flood <- err
						return
					}
				}
			})
			return nil
		},
	}), &wsconsumer.Options{WriteTimeout: 200 * time.Millisecond, Logger: quiet()})
	url := serve(t, h)
	slow := dial(t, url)
	send(t, slow, msg{Op: "flood"})
	fast := dial(t, url)
	for i := range 20 {
		if r := roundTrip(t, fast, msg{ID: i}); r.Name == "" {
			t.Fatalf("fast client: %+v", r)
		}
	}
	select {
	case err := <-flood:
		if err == nil {
			t.Fatal("flood ended without error")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a client that never reads was not closed")
	}
	dbtest.Eventually(t, "the slow socket to go", func() bool { return h.Len() == 1 })
}

// Overload closes the socket with 1013.
func TestOverload(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
			c := dial(t, serve(t, lookupHandler(p, style, nil)))
			ctx, hold := p.Scope(context.Background())
			if err := hold.Reserve(ctx); err != nil {
				t.Fatal(err)
			}
			send(t, c, msg{ID: 1})
			_, code := recv(t, c)
			hold.End()
			if code != websocket.StatusTryAgainLater {
				t.Fatalf("closed with %v, want 1013", code)
			}
		})
	}
}

func TestPanicInConnectAndDisconnect(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	var disconnects atomic.Int32
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			if s.Request().URL.Query().Has("panic") {
				panic("connect boom")
			}
			return nil
		},
		Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) {
			disconnects.Add(1)
			panic("disconnect boom")
		},
	}, &wsconsumer.Options{Logger: quiet()})
	url := serve(t, h)
	if _, resp, err := websocket.Dial(context.Background(), url+"?panic", nil); err == nil || resp.StatusCode != 500 {
		t.Fatalf("panic in connect: %v %v", err, resp)
	}
	c := dial(t, url)
	c.Close(websocket.StatusNormalClosure, "")
	dbtest.Eventually(t, "disconnect", func() bool { return disconnects.Load() == 1 && h.Len() == 0 })
	dial(t, url) // still serving
}

// Shutdown closes every live socket with 1001 and waits for every
// disconnect.
func TestShutdown(t *testing.T) {
	t.Parallel()
	// Every disconnect runs a statement at once: let them all queue.
	p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWaiting: 400, WaitTimeout: 30 * time.Second})
	var disconnects atomic.Int32
	var started sync.WaitGroup
	h := wsconsumer.NewAsync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			started.Add(1)
			s.Go(func(ctx context.Context) { started.Done(); <-ctx.Done() })
			return nil
		},
		Disconnect: func(ctx context.Context, s *wsconsumer.Session, code websocket.StatusCode) {
			if err := dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
				_, err := sc.ExecContext(ctx, "SELECT 1")
				return err
			}); err != nil {
				t.Errorf("disconnect: %v", err)
			}
			disconnects.Add(1)
		},
		// Generous bounds: 200 disconnects queue for the slots, and a
		// loaded machine must not fail what this test asks.
	}, &wsconsumer.Options{Logger: quiet(), DisconnectTimeout: 2 * time.Minute})
	url := serve(t, h)
	const n = 200
	conns := make([]*websocket.Conn, n)
	for i := range conns {
		conns[i] = dial(t, url)
	}
	dbtest.Eventually(t, "all sockets", func() bool { return h.Len() == n })
	started.Wait()
	codes := make(chan websocket.StatusCode, n)
	for _, c := range conns {
		go func() {
			_, _, err := c.Read(context.Background())
			codes <- websocket.CloseStatus(err)
		}()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := h.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if got := disconnects.Load(); got != n {
		t.Fatalf("%d disconnects ran, want %d", got, n)
	}
	for range n {
		if code := <-codes; code != websocket.StatusGoingAway {
			t.Fatalf("client saw %v, want 1001", code)
		}
	}
	if _, resp, err := websocket.Dial(context.Background(), url, nil); err == nil || resp.StatusCode != 503 {
		t.Fatalf("after shutdown: %v %v", err, resp)
	}
}

// A sync consumer's reply to a client that does not read holds no worker
// slot: other sockets are served meanwhile, even with one slot and no
// queue.
func TestSlowClientHoldsNoSlot(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
	var bigDone atomic.Bool
	h := wsconsumer.NewSync(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
		Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
			if m.Op != "big" {
				return lookup(ctx, s, m)
			}
			var n int
			if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
				return err
			}
			err := s.Send(ctx, websocket.MessageBinary, make([]byte, 32<<20)) // more than loopback buffers hold
			bigDone.Store(true)
			return err
		},
	}), &wsconsumer.Options{WriteTimeout: 20 * time.Second, Logger: quiet()})
	url := serve(t, h)
	slow := dial(t, url)
	send(t, slow, msg{Op: "big"})
	dbtest.Eventually(t, "the big reply's slot to be released while it is written", func() bool {
		return bigDone.Load() && p.Stats().InUse == 0
	})
	fast := dial(t, url)
	for i := range 5 {
		if r := roundTrip(t, fast, msg{ID: i}); r.Name == "" {
			t.Fatalf("fast client: %+v", r)
		}
	}
	slow.CloseNow()
}

// A sync callback's replies are written in order once it returns; a send
// with the context of a callback that has returned, from a goroutine it
// left behind, is written at once, not held for the next message.
func TestSendAfterCallback(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	late := make(chan struct{})
	h := wsconsumer.NewSync(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
		Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
			switch m.Op {
			case "later":
				go func() {
					<-late
					s.SendJSON(ctx, msg{ID: m.ID, Op: "late"})
				}()
			case "three":
				for i := range 3 {
					if err := s.SendJSON(ctx, msg{ID: m.ID + i}); err != nil {
						return err
					}
				}
				return nil
			}
			return s.SendJSON(ctx, msg{ID: m.ID})
		},
	}), &wsconsumer.Options{Logger: quiet()})
	c := dial(t, serve(t, h))
	for round := range 3 {
		id := 10 * round
		if r := roundTrip(t, c, msg{ID: id, Op: "later"}); r.ID != id || r.Op != "" {
			t.Fatalf("round %d: got %+v", round, r)
		}
		late <- struct{}{}
		if r, code := recv(t, c); r.ID != id || r.Op != "late" {
			t.Fatalf("round %d: got %+v (close %v), want the late reply", round, r, code)
		}
		send(t, c, msg{ID: id, Op: "three"})
		for i := range 3 {
			if r, code := recv(t, c); r.ID != id+i {
				t.Fatalf("round %d: reply %d is %+v (close %v)", round, i, r, code)
			}
		}
	}
}

// An async consumer with InFlight 3 runs three messages of a socket at
// once and no more: the fourth waits, unread beyond the one message the
// read loop holds, until one of the three is done. Every message is
// answered once released.
func TestInFlight(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	const limit, sent = 3, 8
	gate := make(chan struct{})
	var running, most atomic.Int32
	h := wsconsumer.NewAsync(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
		Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
			n := running.Add(1)
			for {
				if old := most.Load(); n <= old || most.CompareAndSwap(old, n) {
					break
				}
			}
			<-gate
			running.Add(-1)
			return lookup(ctx, s, m)
		},
	}), &wsconsumer.Options{InFlight: limit, Logger: quiet()})
	c := dial(t, serve(t, h))
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // before the server's shutdown, which waits for them
	for i := range sent {
		send(t, c, msg{ID: i})
	}
	dbtest.Eventually(t, "three messages to run", func() bool { return running.Load() >= limit })
	release()
	seen := map[int]bool{}
	for range sent {
		r, _ := recv(t, c)
		if r.Name != fmt.Sprint("item-", r.ID) || seen[r.ID] {
			t.Fatalf("reply %+v (seen %v)", r, seen)
		}
		seen[r.ID] = true
	}
	if n := most.Load(); n != limit {
		t.Errorf("%d messages ran at once, want %d", n, limit)
	}
}

// A message handled for long has its socket read on: the client's ping is
// answered and its next message read while the first is still handled,
// and the two are handled, and answered, in order.
func TestReadOn(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			held := make(chan struct{})
			gate := make(chan struct{})
			var order []int
			h := style(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
				Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
					order = append(order, m.ID) // one at a time: no lock needed
					if m.Op == "hold" {
						close(held)
						<-gate
					}
					return lookup(ctx, s, m)
				},
			}), &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			release := sync.OnceFunc(func() { close(gate) })
			t.Cleanup(release) // before the server's shutdown, which waits for it
			replies := make(chan msg, 2)
			go func() {
				for range 2 {
					_, data, err := c.Read(context.Background())
					if err != nil {
						close(replies)
						return
					}
					var m msg
					json.Unmarshal(data, &m)
					replies <- m
				}
			}()
			send(t, c, msg{ID: 1, Op: "hold"})
			<-held
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := c.Ping(ctx); err != nil {
				t.Fatalf("ping while a message is handled: %v", err)
			}
			send(t, c, msg{ID: 2})
			release()
			for _, want := range []int{1, 2} {
				if r := <-replies; r.ID != want || r.Name != fmt.Sprint("item-", want) {
					t.Fatalf("reply %+v, want %d", r, want)
				}
			}
			if fmt.Sprint(order) != "[1 2]" {
				t.Fatalf("handled %v", order)
			}
		})
	}
}

// Disconnect gets the status of the closing handshake also when the
// server closed the socket while handling a message, nobody reading: a
// failed Receive (1011) and a shutdown mid-message (1001).
func TestDisconnectCodeServerClose(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			codes := make(chan websocket.StatusCode, 1)
			held := make(chan struct{}, 1)
			gate := make(chan struct{})
			h := style(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
					if string(data) == "fail" {
						return errors.New("boom")
					}
					held <- struct{}{}
					<-gate
					return nil
				},
				Disconnect: func(_ context.Context, _ *wsconsumer.Session, code websocket.StatusCode) { codes <- code },
			}, &wsconsumer.Options{Logger: quiet()})
			url := serve(t, h)
			ctx := context.Background()

			c := dial(t, url)
			c.Write(ctx, websocket.MessageText, []byte("fail"))
			if _, code := recv(t, c); code != websocket.StatusInternalError {
				t.Fatalf("client saw %v, want 1011", code)
			}
			if code := <-codes; code != websocket.StatusInternalError {
				t.Errorf("after a failed Receive, Disconnect got %v, want 1011", code)
			}

			c = dial(t, url)
			seen := make(chan websocket.StatusCode, 1)
			go func() { // the client answers the close
				_, _, err := c.Read(ctx)
				seen <- websocket.CloseStatus(err)
			}()
			c.Write(ctx, websocket.MessageText, []byte("hold"))
			<-held
			done := make(chan error, 1)
			go func() {
				sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				defer cancel()
				done <- h.Shutdown(sctx)
			}()
			// The handshake is over while the message is still handled.
			if code := <-seen; code != websocket.StatusGoingAway {
				t.Fatalf("client saw %v, want 1001", code)
			}
			close(gate)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if code := <-codes; code != websocket.StatusGoingAway {
				t.Errorf("after a shutdown mid-message, Disconnect got %v, want 1001", code)
			}
		})
	}
}

// Disconnect gets the status of a closing handshake that coder/websocket
// began itself: 1009 for a message past ReadLimit, which the client
// echoes (it got -1, the library's close being unknown to the handler).
func TestDisconnectCodeReadLimit(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			codes := make(chan websocket.StatusCode, 1)
			h := style(p, wsconsumer.Consumer{
				Disconnect: func(_ context.Context, _ *wsconsumer.Session, code websocket.StatusCode) { codes <- code },
			}, &wsconsumer.Options{Logger: quiet(), ReadLimit: 1024})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := c.Write(ctx, websocket.MessageText, make([]byte, 2000)); err != nil {
				t.Fatal(err)
			}
			_, _, err := c.Read(ctx) // answers the close
			if code := websocket.CloseStatus(err); code != websocket.StatusMessageTooBig {
				t.Fatalf("client saw %v, want 1009", err)
			}
			if code := <-codes; code != websocket.StatusMessageTooBig {
				t.Errorf("Disconnect got %v, want 1009", code)
			}
		})
	}
}

// A quiet socket is pinged once per PingInterval, also where the
// keepalive goroutine looks more often (for the read-on, every 250ms);
// one that answers stays open, one that does not is closed once its ping
// times out.
func TestPing(t *testing.T) {
	t.Parallel()
	for _, answer := range []bool{true, false} {
		t.Run(fmt.Sprint("answer=", answer), func(t *testing.T) {
			t.Parallel()
			interval := time.Second
			if !answer {
				interval = 100 * time.Millisecond
			}
			p, _ := dbtest.NewPool(t, nil)
			h := lookupHandler(p, wsconsumer.NewSync, &wsconsumer.Options{PingInterval: interval})
			var pings atomic.Int32
			start := time.Now()
			c, _, err := websocket.Dial(context.Background(), serve(t, h), &websocket.DialOptions{
				OnPingReceived: func(context.Context, []byte) bool {
					pings.Add(1)
					return answer
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.CloseNow() })
			go c.Read(context.Background()) // control frames are handled while reading
			if !answer {
				dbtest.Eventually(t, "the socket to be closed", func() bool { return h.Len() == 0 })
				return
			}
			dbtest.Eventually(t, "three pings", func() bool { return pings.Load() >= 3 })
			// The first ping comes an interval after the socket was
			// accepted, the next ones an interval apart or later (ticks
			// come late on a busy machine, never early).
			if took := time.Since(start); took < 5*interval/2 {
				t.Errorf("three pings in %v, want them an interval apart", took)
			}
			if h.Len() != 1 {
				t.Fatal("a socket that answers pings was closed")
			}
		})
	}
}

// A socket whose message took longer than the read-on delay (a reader
// read on meanwhile) keeps one goroutine once idle, not two: the reader
// takes the socket over. The sockets then serve and disconnect as
// others. Not parallel: it counts the process's goroutines.
func TestIdleAfterSlowMessage(t *testing.T) {
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			p, _ := dbtest.NewPool(t, nil)
			var disconnects atomic.Int32
			h := style(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
				Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
					err := dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
						_, err := sc.ExecContext(ctx, "SELECT pg_sleep(0.4)") // past readOnAfter
						return err
					})
					if err != nil {
						return err
					}
					return s.SendJSON(ctx, msg{ID: m.ID})
				},
				Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { disconnects.Add(1) },
			}), &wsconsumer.Options{Logger: quiet()})
			url := serve(t, h)
			const sockets = 10
			g0 := runtime.NumGoroutine()
			var cs []*websocket.Conn
			for i := range sockets {
				c := dial(t, url)
				send(t, c, msg{ID: i})
				cs = append(cs, c)
			}
			for i, c := range cs {
				if m, code := recv(t, c); code != 0 || m.ID != i {
					t.Fatalf("socket %d: %+v, %v", i, m, code)
				}
			}
			// One goroutine per socket (its reader) and the keepalive; the
			// client side reads nothing meanwhile.
			dbtest.Eventually(t, "one goroutine per idle socket", func() bool {
				return runtime.NumGoroutine()-g0 <= sockets+1
			})
			for i, c := range cs {
				send(t, c, msg{ID: 100 + i})
			}
			for i, c := range cs {
				if m, code := recv(t, c); code != 0 || m.ID != 100+i {
					t.Fatalf("socket %d after going idle: %+v, %v", i, m, code)
				}
				c.Close(websocket.StatusNormalClosure, "")
			}
			dbtest.Eventually(t, "every socket disconnected", func() bool {
				return disconnects.Load() == sockets && h.Stats().Sockets == 0
			})
		})
	}
}

// Send on a socket its client closed returns ErrClosed, as on one the
// server closed: code that sends to sessions it keeps (a broadcast to a
// map of them) prunes the closed ones by that error. It got the
// websocket library's "failed to write msg: use of closed network
// connection", even once the socket's Disconnect had run.
func TestSendAfterClientClosed(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			kept := make(chan *wsconsumer.Session, 1)
			disconnected := make(chan struct{})
			h := style(p, wsconsumer.Consumer{
				Connect:    func(_ context.Context, s *wsconsumer.Session) error { kept <- s; return nil },
				Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { close(disconnected) },
			}, &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			s := <-kept
			dbtest.Eventually(t, "the socket accepted", func() bool { return h.Len() == 1 })
			if err := s.SendText(context.Background(), "hello"); err != nil {
				t.Fatalf("send to an open socket: %v", err)
			}
			c.Close(websocket.StatusNormalClosure, "")
			<-disconnected
			for what, send := range map[string]func() error{
				"Send":     func() error { return s.Send(context.Background(), websocket.MessageText, []byte("x")) },
				"SendText": func() error { return s.SendText(context.Background(), "x") },
				"SendJSON": func() error { return s.SendJSON(context.Background(), msg{ID: 1}) },
			} {
				if err := send(); !errors.Is(err, wsconsumer.ErrClosed) {
					t.Errorf("%s after the client closed: %v, want ErrClosed", what, err)
				}
			}
		})
	}
}

// Shutdown returns at its deadline, and ends what is left then, where
// clients never answer the close (they do not read): it took 5s more,
// coder/websocket's bound on the closing handshake under way, whose
// CloseNow only waits for it, and the sockets lived as long; plain and
// under TLS.
func TestShutdownDeadlineClientsSilent(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		for _, tls := range []bool{false, true} {
			t.Run(fmt.Sprint(name, "/tls=", tls), func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				var disconnects atomic.Int32
				h := style(p, wsconsumer.Consumer{
					Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { disconnects.Add(1) },
				}, &wsconsumer.Options{Logger: quiet()})
				srv := httptest.NewUnstartedServer(h)
				srv.Config.ErrorLog = log.New(io.Discard, "", 0)
				if tls {
					srv.StartTLS()
				} else {
					srv.Start()
				}
				t.Cleanup(srv.Close)
				url := "ws" + strings.TrimPrefix(srv.URL, "http") // wss for https
				const sockets = 5
				for range sockets {
					// Never read: the close is never echoed.
					c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPClient: srv.Client()})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { c.CloseNow() })
				}
				dbtest.Eventually(t, "accepted", func() bool { return h.Len() == sockets })
				const deadline = 200 * time.Millisecond
				ctx, cancel := context.WithTimeout(context.Background(), deadline)
				defer cancel()
				start := time.Now()
				if err := h.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Shutdown: %v, want its deadline's error", err)
				}
				// Well short of the handshake's 5s, on a loaded machine too.
				const late = 3 * time.Second
				if took := time.Since(start); took > late {
					t.Errorf("Shutdown returned after %v, its deadline %v", took, deadline)
				}
				if err := dbtest.Wait(late, func() bool { return disconnects.Load() == sockets && h.Len() == 0 }); err != nil {
					t.Errorf("%d of %d sockets disconnected %v after the deadline", disconnects.Load(), sockets, late)
				}
			})
		}
	}
}
