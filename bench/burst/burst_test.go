// Package burst_test measures how a pool's wait queue takes bursts and
// overload (issue 23, part 3), over HTTP through middleware.DB, each
// request holding its slot for a 2 ms statement (SELECT pg_sleep(0.002)):
//
//   - BenchmarkClients40: 40 clients, closed loop, 900 requests on 2 slots;
//   - BenchmarkBurst: bursts of 20× the slots at once;
//   - BenchmarkOverload: arrivals at twice what the slots serve, open loop,
//     for three wait timeouts; BenchmarkOverloadRaw is the same on a plain
//     *sql.DB with as many connections, the baseline.
//
// Each reports the requests refused (503) and the latencies of the served
// and of the refused ones. Results and the command are in bench/README.md.
package burst_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// slots is the pool's worker slots in every benchmark, as in the issue.
const slots = 2

// work is each request's statement: 2 ms in the database.
const work = "SELECT pg_sleep(0.002)"

// slowWork is BenchmarkOverload/work=50ms's: work long enough that the
// default MaxWaiting holds more callers than the slots clear within the
// wait timeout.
const slowWork = "SELECT pg_sleep(0.05)"

// server serves work through middleware.DB on a pool of slots with the
// default wait bounds, or, with raw, on a plain *sql.DB of slots
// connections. Each request's time in the server, from its handler's
// start to its end, goes to srv: the client's times add what a loaded
// machine makes the HTTP exchange wait.
func server(b *testing.B, raw bool, srv *outcomes) (url string, client *http.Client) {
	return serverOf(b, raw, work, srv)
}

func serverOf(b *testing.B, raw bool, work string, srv *outcomes) (url string, client *http.Client) {
	env := pgtest.New(b)
	db := env.Open(b)
	var h http.Handler
	if raw {
		db.SetMaxOpenConns(slots)
		db.SetMaxIdleConns(slots)
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if _, err := db.ExecContext(r.Context(), work); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		})
	} else {
		p := dbctx.New(db, &dbctx.Options{MaxWorkers: slots, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		b.Cleanup(func() { p.Close() })
		h = middleware.DB(p)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			if _, err := dbctx.From(ctx).ExecContext(ctx, work); err != nil && !middleware.Answer(w, r, err) {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		}))
	}
	timed := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		srv.add(outcome{refused: sw.code == http.StatusServiceUnavailable, took: time.Since(start)})
	})
	ts := httptest.NewServer(timed)
	b.Cleanup(ts.Close)
	tr := &http.Transport{MaxIdleConns: 4096, MaxIdleConnsPerHost: 4096, IdleConnTimeout: time.Minute}
	b.Cleanup(tr.CloseIdleConnections)
	client = &http.Client{Transport: tr, Timeout: time.Minute}
	for range 10 { // warm: connections to the server and to the database
		get(b, client, ts.URL)
	}
	srv.reset()
	return ts.URL, client
}

// statusWriter keeps the status written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// outcome is one request's.
type outcome struct {
	refused bool // 503
	took    time.Duration
}

func get(b *testing.B, c *http.Client, url string) outcome {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		b.Error(err)
		return outcome{}
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	o := outcome{took: time.Since(start)}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusServiceUnavailable:
		o.refused = true
	default:
		b.Errorf("status %d", resp.StatusCode)
	}
	return o
}

// outcomes collects outcomes from many goroutines.
type outcomes struct {
	mu   sync.Mutex
	list []outcome
}

func (o *outcomes) add(x outcome) {
	o.mu.Lock()
	o.list = append(o.list, x)
	o.mu.Unlock()
}

func (o *outcomes) reset() {
	o.mu.Lock()
	o.list = nil
	o.mu.Unlock()
}

// report reports, per op (n ops), the requests refused, and the
// latencies of the served and the refused ones as the client saw them,
// and as the server did (srv-).
func report(b *testing.B, n int, client, srv *outcomes) {
	client.report(b, n, "")
	srv.report(b, 0, "srv-")
}

// report reports o's latencies, their names prefixed; with n > 0 the
// requests refused and served per op too.
func (o *outcomes) report(b *testing.B, n int, prefix string) {
	var served, refused []time.Duration
	for _, x := range o.list {
		if x.refused {
			refused = append(refused, x.took)
		} else {
			served = append(served, x.took)
		}
	}
	if n > 0 {
		b.ReportMetric(float64(len(refused))/float64(n), "refused/op")
		b.ReportMetric(float64(len(served))/float64(n), "served/op")
		b.Logf("%d requests: %d served, %d refused", len(o.list), len(served), len(refused))
	}
	for _, q := range []struct {
		name string
		ds   []time.Duration
	}{{"served", served}, {"refused", refused}} {
		if len(q.ds) == 0 {
			continue
		}
		slices.Sort(q.ds)
		b.ReportMetric(ms(q.ds[len(q.ds)/2]), prefix+q.name+"-p50-ms")
		b.ReportMetric(ms(q.ds[len(q.ds)*99/100]), prefix+q.name+"-p99-ms")
		b.ReportMetric(ms(q.ds[len(q.ds)-1]), prefix+q.name+"-max-ms")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkClients40 is the case: 40 clients, each sending its
// next request once the last was answered, 900 requests in all, on 2
// slots. One op is the 900 requests.
func BenchmarkClients40(b *testing.B) {
	var o, srv outcomes
	url, c := server(b, false, &srv)
	const clients, requests = 40, 900
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		n++
		var wg sync.WaitGroup
		next := make(chan struct{}, requests)
		for range requests {
			next <- struct{}{}
		}
		close(next)
		for range clients {
			wg.Go(func() {
				for range next {
					o.add(get(b, c, url))
				}
			})
		}
		wg.Wait()
	}
	report(b, n, &o, &srv)
}

// BenchmarkBurst sends bursts of 20× the slots at once: 40 requests on 2
// slots, each burst once the last was answered. One op is a burst.
// Target: none refused.
func BenchmarkBurst(b *testing.B) {
	var o, srv outcomes
	url, c := server(b, false, &srv)
	const burst = 20 * slots
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		n++
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range burst {
			wg.Go(func() {
				<-start
				o.add(get(b, c, url))
			})
		}
		close(start)
		wg.Wait()
	}
	report(b, n, &o, &srv)
}

// BenchmarkOverload sends requests at twice the rate the slots serve
// (measured first, see capacity), open loop: each at its time whatever
// the answers, for three wait timeouts (the default 2s), so that the
// queue reaches its steady state. One op is the whole run. Target: the
// excess refused at once (refused-p99-ms small), served-p99-ms within the
// wait timeout. With work=50ms the default MaxWaiting (400) holds 10s of
// work: what keeps the refusals at once there is the pace (see
// Options.MaxWaiting).
func BenchmarkOverload(b *testing.B) {
	b.Run("work=2ms", func(b *testing.B) { overload(b, false, work) })
	b.Run("work=50ms", func(b *testing.B) { overload(b, false, slowWork) })
}

// BenchmarkOverloadRaw is BenchmarkOverload/work=2ms on a plain *sql.DB
// with as many connections as the slots: database/sql queues without
// bound, so nothing is refused and the wait grows with the run.
func BenchmarkOverloadRaw(b *testing.B) { overload(b, true, work) }

func overload(b *testing.B, raw bool, work string) {
	var o, srv outcomes
	url, c := serverOf(b, raw, work, &srv)
	rate := capacity(b, c, url)
	srv.reset()
	const factor, run = 2, 6 * time.Second
	every := time.Duration(float64(time.Second) / (factor * rate))
	b.Logf("served %.0f requests/s closed loop; sending %.0f/s (one each %v) for %v", rate, factor*rate, every, run)
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		n++
		var wg sync.WaitGroup
		start := time.Now()
		for i := 0; ; i++ {
			at := start.Add(time.Duration(i) * every)
			if at.Sub(start) >= run {
				break
			}
			time.Sleep(time.Until(at))
			wg.Go(func() { o.add(get(b, c, url)) })
		}
		wg.Wait()
	}
	b.ReportMetric(factor*rate, "sent/s")
	report(b, n, &o, &srv)
}

// capacity returns the requests per second the server serves closed loop
// over one second, with 4 clients per slot: the slots never idle while
// the server and the client do their part, and the queue stays short.
func capacity(b *testing.B, c *http.Client, url string) float64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var mu sync.Mutex
	served := 0
	var wg sync.WaitGroup
	start := time.Now()
	for range 4 * slots {
		wg.Go(func() {
			for ctx.Err() == nil {
				if o := get(b, c, url); !o.refused {
					mu.Lock()
					served++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if served == 0 {
		b.Fatal(fmt.Errorf("nothing served"))
	}
	return float64(served) / time.Since(start).Seconds()
}
