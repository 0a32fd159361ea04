package wsconsumer_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// The workload of every benchmark here: each text frame {"id":k} is
// answered {"id":k,"name":"item-k"} from one SELECT.
const itemQuery = "SELECT 'item-' || $1::int"

// rawHandler is the baseline: coder/websocket and a plain *sql.DB, no
// dbscope.
func rawHandler(db *sql.DB) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := context.WithoutCancel(r.Context())
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m msg
			if err := json.Unmarshal(data, &m); err != nil {
				return
			}
			if err := db.QueryRowContext(ctx, itemQuery, m.ID).Scan(&m.Name); err != nil {
				m.Error = err.Error()
			}
			out, _ := json.Marshal(m)
			if err := c.Write(ctx, websocket.MessageText, out); err != nil {
				return
			}
		}
	})
}

func itemsConsumer(async bool) wsconsumer.Consumer {
	return wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{
		Receive: func(ctx context.Context, s *wsconsumer.Session, m msg) error {
			var err error
			if async {
				err = dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
					return sc.QueryRowContext(ctx, itemQuery, m.ID).Scan(&m.Name)
				})
			} else {
				err = dbctx.From(ctx).QueryRowContext(ctx, itemQuery, m.ID).Scan(&m.Name)
			}
			if err != nil {
				m.Error = err.Error()
			}
			return s.SendJSON(ctx, m)
		},
	})
}

// benchServer returns the handler of one mode over a database of its own
// with the pool's connection limits in every mode.
func benchServer(b *testing.B, mode string) (http.Handler, *dbctx.Pool) {
	return modeHandler(pgtest.New(b).Open(b), mode)
}

// modeHandler returns the handler of one mode over db, and the pool it
// puts over db: every mode gets the pool's connection limits.
func modeHandler(db *sql.DB, mode string) (http.Handler, *dbctx.Pool) {
	p := dbctx.New(db, nil)
	switch mode {
	case "raw":
		return rawHandler(db), p
	case "sync":
		return wsconsumer.NewSync(p, itemsConsumer(false), nil), p
	default:
		return wsconsumer.NewAsync(p, itemsConsumer(true), nil), p
	}
}

// benchMessages measures request/response messages per second over 4
// sockets.
func benchMessages(b *testing.B, mode string) {
	h, _ := benchServer(b, mode)
	url := serveB(b, h)
	b.ReportAllocs()
	b.SetParallelism(2) // 2×GOMAXPROCS sockets
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close(websocket.StatusNormalClosure, "")
		for i := 0; pb.Next(); i++ {
			if err := ask(ctx, c, i); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// ask sends the message of id i on c and reads the reply.
func ask(ctx context.Context, c *websocket.Conn, i int) error {
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"id":`+strconv.Itoa(i)+`}`)); err != nil {
		return err
	}
	_, _, err := c.Read(ctx)
	return err
}

func BenchmarkMessagesRaw(b *testing.B)   { benchMessages(b, "raw") }
func BenchmarkMessagesSync(b *testing.B)  { benchMessages(b, "sync") }
func BenchmarkMessagesAsync(b *testing.B) { benchMessages(b, "async") }

// benchPaired serves the raw handler and one dbscope mode side by side,
// each with its own *sql.DB and the pool's limits, and has every client
// send one message to each in turn, timing both. What the machine does
// meanwhile (the server's other core, GC, the clients) lands on both sides
// alike, which separate benchmarks run one after the other cannot give
// (which side goes first alternates, so neither is always second):
// their figures differ by more than the gap from run to run. Over
// 2×GOMAXPROCS sockets of each kind it reports each side's time per
// message and x-raw, raw's over dbscope's (1 = as fast). That is a ratio
// of latencies: with the machine saturated, both sides mostly wait for
// the same CPU, so it understates the throughput gap that bench/run.sh
// measures.
func benchPaired(b *testing.B, mode string) {
	env := pgtest.New(b)
	raw, _ := modeHandler(env.Open(b), "raw")
	h, _ := modeHandler(env.Open(b), mode)
	urls := [2]string{serveB(b, raw), serveB(b, h)}
	var mu sync.Mutex
	var spent [2]time.Duration
	b.SetParallelism(2)
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		var conns [2]*websocket.Conn
		for i, url := range urls {
			c, _, err := websocket.Dial(ctx, url, nil)
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close(websocket.StatusNormalClosure, "")
			conns[i] = c
		}
		var mine [2]time.Duration
		for i := 0; pb.Next(); i++ {
			for j := range 2 {
				k := j ^ i&1 // raw first, then dbscope first
				c := conns[k]
				start := time.Now()
				if err := ask(ctx, c, i); err != nil {
					b.Error(err)
					return
				}
				mine[k] += time.Since(start)
			}
		}
		mu.Lock()
		spent[0] += mine[0]
		spent[1] += mine[1]
		mu.Unlock()
	})
	b.ReportMetric(float64(spent[0])/float64(b.N), "raw-ns/msg")
	b.ReportMetric(float64(spent[1])/float64(b.N), mode+"-ns/msg")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "x-raw")
}

func BenchmarkMessagesPairedSync(b *testing.B)  { benchPaired(b, "sync") }
func BenchmarkMessagesPairedAsync(b *testing.B) { benchPaired(b, "async") }

// benchIdle opens 5,000 idle sockets, each having sent one message, and reports
// the server-and-client memory per socket (heap spans in use and stacks;
// live objects and stacks) and the database connections held meanwhile.
func benchIdle(b *testing.B, mode string) {
	const sockets = 5000
	h, p := benchServer(b, mode)
	url := serveB(b, h)
	for b.Loop() {
	}
	ctx := context.Background()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	conns := make([]*websocket.Conn, 0, sockets)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range sockets / 8 {
				c, _, err := websocket.Dial(ctx, url, nil)
				if err != nil {
					b.Error(err)
					return
				}
				c.Write(ctx, websocket.MessageText, []byte(`{"id":1}`))
				c.Read(ctx)
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	settle()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	used := (after.HeapInuse + after.StackInuse) - (before.HeapInuse + before.StackInuse)
	b.ReportMetric(float64(used)/sockets, "B/socket")
	// Live objects and stacks, without the partly used spans that make
	// HeapInuse move by a few hundred bytes per socket from run to run.
	live := (after.HeapAlloc + after.StackInuse) - (before.HeapAlloc + before.StackInuse)
	b.ReportMetric(float64(live)/sockets, "live-B/socket")
	b.ReportMetric(float64(p.DB().Stats().InUse), "db-conns-in-use")
	b.ReportMetric(float64(p.Stats().Pinned), "pinned")
	for _, c := range conns {
		c.CloseNow()
	}
}

// settle waits until the goroutine count has not changed for 1.5s (the
// goroutines of the connecting and messaging winding down), at most 15s:
// the memory of idle sockets is measured at rest.
func settle() {
	last, since := runtime.NumGoroutine(), time.Now()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
		if n := runtime.NumGoroutine(); n != last {
			last, since = n, time.Now()
		} else if time.Since(since) > 1500*time.Millisecond {
			return
		}
	}
}

func BenchmarkIdleSocketsRaw(b *testing.B)   { benchIdle(b, "raw") }
func BenchmarkIdleSocketsSync(b *testing.B)  { benchIdle(b, "sync") }
func BenchmarkIdleSocketsAsync(b *testing.B) { benchIdle(b, "async") }

func serveB(b *testing.B, h http.Handler) string {
	srv := httptestServer(h)
	b.Cleanup(func() {
		if wh, ok := h.(*wsconsumer.Handler); ok {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			wh.Shutdown(ctx)
		}
		srv.Close()
	})
	return "ws" + srv.URL[len("http"):]
}

// benchIdleMembers opens 5,000 idle sockets, then has each join one group
// (the memory layer), and reports what joining added per socket, at rest:
// live objects and stacks, and goroutines (an idle member should hold
// none).
//
//	go test -run x -bench IdleMembers -benchtime 1x ./wsconsumer
func benchIdleMembers(b *testing.B, style func(*dbctx.Pool, wsconsumer.Consumer, *wsconsumer.Options) *wsconsumer.Handler) {
	const sockets = 5000
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer layer.Close()
	p := dbctx.New(pgtest.New(b).Open(b), nil)
	defer p.Close()
	receive := func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
		if string(data) == "join" {
			if err := s.Join(ctx, "room"); err != nil {
				return err
			}
		}
		return s.SendText(ctx, "ok")
	}
	url := serveB(b, style(p, wsconsumer.Consumer{Receive: receive}, &wsconsumer.Options{Layer: layer}))
	for b.Loop() {
	}
	ctx := context.Background()
	conns := make([]*websocket.Conn, sockets)
	each := func(f func(c **websocket.Conn)) {
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for i := w; i < sockets; i += 8 {
					f(&conns[i])
				}
			})
		}
		wg.Wait()
	}
	each(func(c **websocket.Conn) {
		var err error
		if *c, _, err = websocket.Dial(ctx, url, nil); err != nil {
			b.Error(err)
			return
		}
		(*c).Write(ctx, websocket.MessageText, []byte("hello"))
		(*c).Read(ctx)
	})
	measure := func() (live uint64, goroutines int) {
		settle()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc + ms.StackInuse, runtime.NumGoroutine()
	}
	live0, g0 := measure()
	each(func(c **websocket.Conn) {
		(*c).Write(ctx, websocket.MessageText, []byte("join"))
		(*c).Read(ctx)
	})
	live1, g1 := measure()
	if st := layer.Stats(); st.Members != sockets {
		b.Fatalf("%d members, want %d", st.Members, sockets)
	}
	b.ReportMetric((float64(live1)-float64(live0))/sockets, "live-B/member")
	b.ReportMetric(float64(g1-g0), "goroutines")
	b.ReportMetric(float64(p.Stats().Pinned), "pinned")
	for _, c := range conns {
		if c != nil {
			c.CloseNow()
		}
	}
}

func BenchmarkIdleMembersSync(b *testing.B)  { benchIdleMembers(b, wsconsumer.NewSync) }
func BenchmarkIdleMembersAsync(b *testing.B) { benchIdleMembers(b, wsconsumer.NewAsync) }
