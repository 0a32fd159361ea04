package wsconsumer_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// groupServer serves sockets that join the group their URL names (?g=)
// once accepted, answer "ping" frames with "pong", and answer each event
// with "event <group> <data> <n>" (n: the query the event ran through the
// database) or "gap <group>". While a callback runs, the socket's count
// (its State) has it: in the sync style it must never exceed one.
type groupServer struct {
	layer   *groups.Layer
	pool    *dbctx.Pool
	env     *pgtest.Env
	overlap atomic.Int32
	hold    chan struct{} // when not nil, events wait on it
	url     string
	last    atomic.Pointer[wsconsumer.Session] // the socket connected last
}

func newGroupServer(t *testing.T, style styleFn, opts *wsconsumer.Options, popts ...dbctx.Options) *groupServer {
	t.Helper()
	var po *dbctx.Options
	if len(popts) > 0 {
		po = &popts[0]
	}
	p, env := dbtest.NewPool(t, po)
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if st := layer.Stats(); st.Members != 0 {
			t.Errorf("members left at the end: %+v", st)
		}
		layer.Close()
	})
	g := &groupServer{layer: layer, pool: p, env: env}
	if opts == nil {
		opts = &wsconsumer.Options{}
	}
	opts.Layer = layer
	opts.Logger = quiet()
	enter := func(s *wsconsumer.Session) func() {
		busy := s.State.(*atomic.Int32)
		if busy.Add(1) > 1 {
			g.overlap.Add(1)
		}
		return func() { busy.Add(-1) }
	}
	// Do runs on the callback's scope in the sync style.
	query := dbctx.Do
	h := style(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			group := s.Request().URL.Query().Get("g")
			s.State = new(atomic.Int32)
			g.last.Store(s)
			s.Go(func(ctx context.Context) {
				if err := s.Join(ctx, group); err != nil {
					s.Close(websocket.StatusInternalError, err.Error())
					return
				}
				s.SendText(ctx, "joined "+group)
			})
			return nil
		},
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			defer enter(s)()
			if string(data) == "leave" {
				for _, g := range s.Groups() {
					s.Leave(g)
				}
				return s.SendText(ctx, "left")
			}
			return query(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
				var n int
				if err := sc.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
					return err
				}
				return s.SendText(ctx, "pong")
			})
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			defer enter(s)()
			if g.hold != nil {
				<-g.hold
			}
			if e.Gap {
				return s.SendText(ctx, "gap "+e.Group)
			}
			return query(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
				var n int
				if err := sc.QueryRowContext(ctx, "SELECT $1::int + 1", len(e.Data)).Scan(&n); err != nil {
					return err
				}
				return s.SendText(ctx, fmt.Sprintf("event %s %s %d", e.Group, e.Data, n))
			})
		},
	}, opts)
	g.url = serve(t, h)
	return g
}

func (g *groupServer) dial(t *testing.T, group string) *websocket.Conn {
	t.Helper()
	c := dial(t, g.url+"?g="+group)
	if got := readText(t, c); got != "joined "+group {
		t.Fatalf("got %q, want joined", got)
	}
	return c
}

func readText(t *testing.T, c *websocket.Conn) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return string(data)
}

// Events reach every socket of the group, in order, with Receive's
// discipline: sync callbacks one at a time, in a slot, querying the
// scope; async ones through dbctx.Do. Between events an idle member holds
// no slot and no connection.
func TestEvents(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			g := newGroupServer(t, style, nil)
			const sockets, msgs = 20, 30
			conns := make([]*websocket.Conn, sockets)
			for i := range conns {
				conns[i] = g.dial(t, "room")
			}
			ctx := context.Background()
			for k := range msgs {
				if err := g.layer.Send(ctx, "room", fmt.Appendf(nil, "m%02d", k)); err != nil {
					t.Fatal(err)
				}
				// Receives interleaved with the events.
				if err := conns[k%sockets].Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
					t.Fatal(err)
				}
			}
			for i, c := range conns {
				k := 0
				pongs := 0
				for k < msgs || pongs < (msgs+sockets-1-i)/sockets {
					switch got := readText(t, c); {
					case got == "pong":
						pongs++
					case got == fmt.Sprintf("event room m%02d 4", k):
						k++
					default:
						t.Fatalf("socket %d: got %q, want event m%02d", i, got, k)
					}
				}
			}
			if n := g.overlap.Load(); name == "sync" && n != 0 {
				t.Errorf("%d callbacks of a socket overlapped in the sync style", n)
			}
			dbtest.Eventually(t, "idle members to hold nothing", func() bool {
				st := g.pool.Stats()
				return st.InUse == 0 && st.Pinned == 0
			})
			if st := g.layer.Stats(); st.Members != sockets || st.Delivered != sockets*msgs {
				t.Errorf("layer: %+v, want %d members and %d delivered", st, sockets, sockets*msgs)
			}
		})
	}
}

// A message to a large group wakes every member at once: on a pool of one
// slot with a wait queue of one, they wait their turn (internal/patient)
// rather than be refused, and every one gets every message, while a
// receive is still refused only by its own kind's queue.
func TestFanOutSmallPool(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// A wait bounded only by the test: on a loaded machine the last of
			// 500 events may wait longer than the default 2s for its turn.
			g := newGroupServer(t, style, nil, dbctx.Options{MaxWorkers: 1, MaxWaiting: 1, WaitTimeout: time.Minute})
			const sockets, msgs = 100, 5
			conns := make([]*websocket.Conn, sockets)
			for i := range conns {
				conns[i] = g.dial(t, "big")
			}
			ctx := context.Background()
			for k := range msgs {
				if err := g.layer.Send(ctx, "big", fmt.Appendf(nil, "m%d", k)); err != nil {
					t.Fatal(err)
				}
			}
			for i, c := range conns {
				for k := range msgs {
					if got, want := readText(t, c), fmt.Sprintf("event big m%d 3", k); got != want {
						t.Fatalf("socket %d: got %q, want %q", i, got, want)
					}
				}
			}
			if st := g.pool.Stats(); st.Busy != 0 {
				t.Fatalf("%d refused: %+v", st.Busy, st)
			}
		})
	}
}

// A socket whose events pile up is closed with StatusTooSlow, and counted,
// after the OnSlow of Options.Member has run; from then on it joins
// nothing (wsconsumer.ErrClosed, not groups'). The others of the group
// get everything.
func TestSlowSocket(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var g *groupServer
			joined := make(chan error, 1)
			onSlow := func() { joined <- g.last.Load().Join(context.Background(), "other") }
			g = newGroupServer(t, style, &wsconsumer.Options{Member: &groups.MemberOptions{MaxQueue: 5, OnSlow: onSlow}})
			g.hold = make(chan struct{})
			slow := g.dial(t, "s")
			ctx := context.Background()
			for k := range 10 {
				if err := g.layer.Send(ctx, "s", fmt.Appendf(nil, "%d", k)); err != nil {
					t.Fatal(err)
				}
			}
			// One event is in its callback, five wait: the sixth
			// overflows.
			dbtest.Eventually(t, "the overflow", func() bool { return g.layer.Stats().Slow == 1 })
			close(g.hold)
			rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			for {
				_, _, err := slow.Read(rctx)
				if err != nil {
					if code := websocket.CloseStatus(err); code != wsconsumer.StatusTooSlow {
						t.Fatalf("closed with %v (%v), want StatusTooSlow", code, err)
					}
					break
				}
			}
			select {
			case err := <-joined:
				if err != wsconsumer.ErrClosed {
					t.Fatalf("Join from OnSlow: %v, want wsconsumer.ErrClosed alone", err)
				}
			default:
				t.Fatal("the socket was closed as too slow without its Member.OnSlow")
			}
			// One that keeps up, within its queue of five, gets all.
			fast := g.dial(t, "s")
			for k := range 20 {
				if err := g.layer.Send(ctx, "s", fmt.Appendf(nil, "%d", k%10)); err != nil {
					t.Fatal(err)
				}
				if got, want := readText(t, fast), fmt.Sprintf("event s %d 2", k%10); got != want {
					t.Fatalf("got %q, want %q", got, want)
				}
			}
			if st := g.layer.Stats(); st.Slow != 1 {
				t.Fatalf("slow = %d, want 1", st.Slow)
			}
		})
	}
}

// Leave and the disconnect take the socket out of its groups: nothing
// reaches it after; the layer holds no member at the end.
func TestLeaveAndDisconnect(t *testing.T) {
	t.Parallel()
	g := newGroupServer(t, wsconsumer.NewSync, nil)
	a, b := g.dial(t, "x"), g.dial(t, "x")
	ctx := context.Background()
	if err := a.Write(ctx, websocket.MessageText, []byte("leave")); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, a); got != "left" {
		t.Fatalf("got %q", got)
	}
	if err := g.layer.Send(ctx, "x", []byte("after")); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, b); got != "event x after 6" {
		t.Fatalf("b got %q", got)
	}
	if err := a.Write(ctx, websocket.MessageText, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, a); got != "pong" {
		t.Fatalf("a got %q after leaving, want only its pong", got)
	}
	b.Close(websocket.StatusNormalClosure, "")
	a.Close(websocket.StatusNormalClosure, "")
	dbtest.Eventually(t, "no member left", func() bool { return g.layer.Stats().Members == 0 })
}

// Events in the sync style run between boundaries: a backend killed
// between two events costs nothing.
func TestEventAfterIdleKill(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	g := newGroupServer(t, wsconsumer.NewSync, nil)
	c := g.dial(t, "k")
	ctx := context.Background()
	for k := range 5 {
		if err := g.layer.Send(ctx, "k", fmt.Appendf(nil, "%d", k)); err != nil {
			t.Fatal(err)
		}
		if got, want := readText(t, c), fmt.Sprintf("event k %d 2", k); got != want {
			t.Fatalf("after %d kills: got %q, want %q", k, got, want)
		}
		dbtest.Eventually(t, "the event's connection given back", func() bool { return g.pool.Stats().Pinned == 0 })
		g.env.Terminate(t)
	}
}

// Join without a layer says so.
func TestJoinWithoutLayer(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	joined := make(chan error, 1)
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			joined <- s.Join(ctx, "g")
			return nil
		},
	}, &wsconsumer.Options{Logger: quiet()})
	c := dial(t, serve(t, h))
	if err := <-joined; !errors.Is(err, wsconsumer.ErrNoLayer) {
		t.Fatalf("Join: %v, want ErrNoLayer", err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// In the sync style an Event callback takes its worker slot at its first
// statement: one that only passes the event on reaches the client while
// every slot is held elsewhere; one that queries waits for the slot, what
// it sent before written at once.
func TestEventTakesSlotAtFirstStatement(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1})
	layer := memoryLayer(t)
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			if err := s.Join(ctx, "g"); err != nil {
				return err
			}
			return s.SendText(ctx, "joined")
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			if string(e.Data) == "query" {
				if err := s.SendText(ctx, "before"); err != nil {
					return err
				}
				var n int
				if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
					return err
				}
			}
			return s.SendText(ctx, string(e.Data))
		},
	}, &wsconsumer.Options{Layer: layer, Logger: quiet()})
	c := dial(t, serve(t, h))
	ctx := context.Background()
	if err := c.Write(ctx, websocket.MessageText, []byte("join")); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, c); got != "joined" {
		t.Fatalf("got %q, want joined", got)
	}
	held, release, done := make(chan struct{}), make(chan struct{}), make(chan error)
	go func() {
		done <- p.Do(ctx, func(context.Context, *dbctx.Scope) error {
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	for _, data := range []string{"pass", "query"} {
		if err := layer.Send(ctx, "g", []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"pass", "before"} {
		if got := readText(t, c); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}
	dbtest.Eventually(t, "the querying event to wait for the slot", func() bool { return p.Stats().Waiting == 1 })
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := readText(t, c); got != "query" {
		t.Fatalf("got %q, want query", got)
	}
}

// An event of a group that the socket's member had taken from its queue,
// and that waited for its turn (the sync Receive under way; the socket
// not yet open, for a group joined in Connect), does not reach Event once
// Session.Leave of its group has returned: Leave's "no event of group
// reaches it" holds for the event in the member's hands too. Not
// parallel: it looks for the waiting event in every goroutine's stack.
func TestEventAfterLeave(t *testing.T) {
	cases := []struct {
		name  string
		style styleFn
		in    string // where Leave runs
	}{
		{"sync/receive", wsconsumer.NewSync, "receive"},
		{"sync/connect", wsconsumer.NewSync, "connect"},
		{"async/connect", wsconsumer.NewAsync, "connect"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			receiving, release := make(chan struct{}), make(chan struct{})
			var events atomic.Int64
			h := tc.style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					if err := s.Join(ctx, "room"); err != nil {
						return err
					}
					if tc.in == "connect" {
						if err := layer.Send(ctx, "room", []byte("m")); err != nil {
							return err
						}
						// The member's goroutine has the event and waits
						// for the socket to open.
						dbtest.Eventually(t, "the event to wait for the socket", func() bool { return inStack("wsconsumer.(*Handler).event(") })
						s.Leave("room")
					}
					return nil
				},
				Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
					close(receiving)
					<-release
					s.Leave("room")
					return s.SendText(ctx, "left")
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					events.Add(1)
					return nil
				},
			}, &wsconsumer.Options{Logger: quiet(), Layer: layer})
			c := dial(t, serve(t, h))
			if tc.in == "receive" {
				ctx := context.Background()
				if err := c.Write(ctx, websocket.MessageText, []byte("leave")); err != nil {
					t.Fatal(err)
				}
				<-receiving
				if err := layer.Send(ctx, "room", []byte("m")); err != nil {
					t.Fatal(err)
				}
				dbtest.Eventually(t, "the event to wait for the Receive", func() bool { return inStack("wsconsumer.(*Session).lockCallbacks(") })
				close(release)
				if got := readText(t, c); got != "left" {
					t.Fatalf("got %q, want left", got)
				}
			}
			dbtest.Eventually(t, "the event handled", func() bool { return layer.Stats().Delivered == 1 })
			if n := events.Load(); n != 0 {
				t.Fatalf("Event ran for an event of a group left (Session.Leave returned) before its turn came")
			}
		})
	}
}

// inStack reports whether a goroutine's stack has a frame of fn.
func inStack(fn string) bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), fn)
}

// A panic in Options.Member.OnSlow, which runs on the member's goroutine,
// is the hook's failure, as one in OnCallback is: the socket closes with
// 1011 and the panic is logged, where it crashed the process.
func TestOnSlowPanic(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			logs, logger := dbtest.NewLogs()
			handling, release := make(chan struct{}, 1), make(chan struct{})
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error { return s.Join(ctx, "g") },
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					select {
					case handling <- struct{}{}:
					default:
					}
					<-release
					return nil
				},
			}, &wsconsumer.Options{Logger: logger, Layer: layer,
				Member: &groups.MemberOptions{MaxQueue: 2, OnSlow: func() { panic("the hook failed") }}})
			c := dial(t, serve(t, h))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if err := layer.Send(ctx, "g", []byte("0")); err != nil {
				t.Fatal(err)
			}
			<-handling
			for i := 1; i <= 3; i++ { // the third overflows the queue
				if err := layer.Send(ctx, "g", []byte("x")); err != nil {
					t.Fatal(err)
				}
			}
			close(release)
			if _, _, err := c.Read(ctx); websocket.CloseStatus(err) != websocket.StatusInternalError {
				t.Fatalf("read: %v, want close 1011", err)
			}
			dbtest.Eventually(t, "the panic logged", func() bool {
				for _, r := range logs.AtLeast(slog.LevelError) {
					if r.Attrs["callback"] == "OnSlow" && strings.Contains(r.Attrs["err"], "the hook failed") {
						return true
					}
				}
				return false
			})
		})
	}
}

// Leave, then Join again, while events flow, in both styles: no event
// sent before a Leave begins once that Leave has returned, and none
// twice. An async Event that had passed the check of its group just
// before a concurrent Leave could begin after Leave returned (4 runs in
// 14). What an event saw is read where it begins (OnCallback, which runs
// before the Event callback, under what Leave waits for), so that the
// check does not depend on timing.
func TestLeaveRejoinWhileEventsFlow(t *testing.T) {
	t.Parallel()
	for _, style := range []struct {
		name string
		new  styleFn
	}{{"sync", wsconsumer.NewSync}, {"async", wsconsumer.NewAsync}} {
		t.Run(style.name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			layer := memoryLayer(t)
			type loKey struct{}
			var sent, lo atomic.Int64 // lo: every event up to it was sent before the last Leave began
			var mu sync.Mutex
			seen := map[int64]int{}
			var bad []string
			h := style.new(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error { return s.Join(ctx, "g") },
				Receive: func(ctx context.Context, s *wsconsumer.Session, typ websocket.MessageType, data []byte) error {
					before := sent.Load()
					s.Leave("g")
					lo.Store(before)
					if err := s.Join(ctx, "g"); err != nil {
						return err
					}
					return s.SendText(ctx, "ok")
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					n, _ := strconv.ParseInt(string(e.Data), 10, 64)
					mu.Lock()
					defer mu.Unlock()
					if seen[n]++; seen[n] > 1 {
						bad = append(bad, fmt.Sprintf("event %d twice", n))
					}
					if l := ctx.Value(loKey{}).(int64); n <= l {
						bad = append(bad, fmt.Sprintf("event %d began after a Leave that began once it was sent (%d)", n, l))
					}
					return nil
				},
			}, &wsconsumer.Options{Logger: quiet(), Layer: layer,
				Member: &groups.MemberOptions{MaxQueue: 1 << 20, MaxBytes: 1 << 30},
				OnCallback: func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
					return context.WithValue(ctx, loKey{}, lo.Load()), nil
				}})
			c := dial(t, serve(t, h))
			ctx := context.Background()
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				for {
					select {
					case <-stop:
						return
					default:
					}
					n := sent.Load() + 1
					layer.Send(ctx, "g", []byte(strconv.FormatInt(n, 10)))
					sent.Store(n)
				}
			}()
			for range 300 {
				if err := c.Write(ctx, websocket.MessageText, []byte("x")); err != nil {
					t.Fatal(err)
				}
				if _, _, err := c.Read(ctx); err != nil {
					t.Fatal(err)
				}
			}
			close(stop)
			<-done
			mu.Lock()
			defer mu.Unlock()
			if len(bad) > 0 {
				t.Fatalf("%d violations, the first: %q", len(bad), bad[:min(5, len(bad))])
			}
		})
	}
}

// A socket that joins a group in Connect and falls behind before it is
// accepted (its first event waits for the socket to open, and the member
// is told at once) is closed with StatusTooSlow once open, not left open
// with no groups.
func TestSlowBeforeAccept(t *testing.T) {
	for name, style := range styles {
		t.Run(name, func(t *testing.T) { slowBeforeAccept(t, style) })
	}
}

func slowBeforeAccept(t *testing.T, style styleFn) {
	p, _ := dbtest.NewPool(t, nil)
	layer := memoryLayer(t)
	release := make(chan struct{})
	slowRan := make(chan struct{}, 1)
	h := style(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			if err := s.Join(ctx, "c"); err != nil {
				return err
			}
			<-release
			return nil
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			return s.SendText(ctx, "event "+string(e.Data))
		},
	}, &wsconsumer.Options{Layer: layer, Logger: quiet(), Member: &groups.MemberOptions{MaxQueue: 5, OnSlow: func() { slowRan <- struct{}{} }}})
	url := serve(t, h)
	dialed := make(chan *websocket.Conn, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			t.Error(err)
		}
		dialed <- c
	}()
	dbtest.Eventually(t, "the member in c", func() bool { return layer.Stats().Members == 1 })
	for k := range 10 {
		if err := layer.Send(context.Background(), "c", fmt.Appendf(nil, "%d", k)); err != nil {
			t.Fatal(err)
		}
	}
	dbtest.Eventually(t, "the overflow", func() bool { return layer.Stats().Slow == 1 })
	select {
	case <-slowRan:
	case <-time.After(5 * time.Second):
		t.Fatal("OnSlow did not run")
	}
	close(release)
	c := <-dialed
	if c == nil {
		t.Fatal("no socket")
	}
	defer c.CloseNow()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			if code := websocket.CloseStatus(err); code != wsconsumer.StatusTooSlow {
				t.Fatalf("closed with %v (%v), want StatusTooSlow", code, err)
			}
			return
		}
		t.Logf("got %q", data)
	}
}
