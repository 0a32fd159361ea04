package faults_test

import (
	"context"
	"fmt"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// idleSockets is the number of idle sockets TestIdleSockets aims for.
const idleSockets = 5000

// idleCount returns how many idle sockets the file limit allows, up to
// idleSockets: each takes two descriptors in this process (client and
// server side). It raises the soft limit towards the hard one if needed.
func idleCount(t *testing.T) int {
	const spare = 1000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	need := uint64(2*idleSockets + spare)
	if lim.Cur < need && lim.Cur < lim.Max {
		lim.Cur = min(need, lim.Max)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Logf("raising the file limit: %v", err)
		}
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	n := idleSockets
	if lim.Cur < need {
		n = max(0, int(lim.Cur-spare)/2)
	}
	t.Logf("file limit %d: %d idle sockets", lim.Cur, n)
	return n
}

// TestIdleSockets holds thousands of idle sockets, each having sent one
// message, beside active load: the server's database connections never
// exceed its slots (pg_stat_activity polled throughout), an idle socket
// holds no connection and no slot, and the memory per idle socket is
// logged per mode (client and server side together, both in this
// process; the client side is the same in every mode, so the difference to
// raw is what dbscope adds).
func TestIdleSockets(t *testing.T) {
	n := idleCount(t)
	if n < 100 {
		t.Skipf("file limit allows only %d sockets", n)
	}
	perSocket := map[string]int64{}
	for _, mode := range []string{"raw", "sync", "async"} {
		t.Run(mode, func(t *testing.T) {
			// The idle clients do not read, so they would not answer a
			// ping (a browser does): where opening the sockets takes
			// longer than the ping interval (under -race on a loaded
			// machine), the server would ping the first ones, each
			// ping a goroutine waiting for a pong that never comes,
			// then close them. No ping within the test.
			f := start(t, itemserver.Config{Mode: mode, PingInterval: 10 * time.Minute}, nil)
			slots := int64(f.srv.MaxWorkers())
			peak, stopPoll := pollConns(t, f)

			g0 := runtime.NumGoroutine()
			before := heapNow()
			conns, err := loadgen.OpenIdle(context.Background(), f.srv.URL(), n, 30*time.Second)
			defer func() {
				for _, c := range conns {
					c.CloseNow()
				}
			}()
			if err != nil {
				t.Fatal(err)
			}
			// Idle means one goroutine per socket, the server's reader
			// (also for a socket whose message took long enough for a
			// reader to read on meanwhile: it takes the socket over).
			// The last replies' goroutines may still be finishing.
			idle := func() bool { return runtime.NumGoroutine() <= g0+n+20 }
			if dbtest.Wait(10*time.Second, idle) != nil {
				t.Fatalf("%d goroutines for %d idle sockets, want one each; the most common:\n%s",
					runtime.NumGoroutine()-g0, n, commonStacks(10))
			}
			after := heapNow()
			perSocket[mode] = (after - before) / int64(n)
			if p := f.srv.Pool(); p != nil {
				if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
					t.Errorf("%d idle sockets hold %d slots and %d connections, want none", n, st.InUse, st.Pinned)
				}
			}

			res := f.load(loadgen.Config{Clients: 4, Messages: 1 << 20, Duration: 2 * time.Second})
			stopPoll()
			logResult(t, res)
			noFailures(t, res)
			if res.ErrorReplies != 0 {
				t.Errorf("%d error replies: %q", res.ErrorReplies, res.FirstErrors)
			}
			t.Logf("%s: %d idle sockets, %d B each (client and server); %.0f msgs/s beside them; peak %d database connections for %d slots",
				mode, n, perSocket[mode], res.MsgsPerS, peak.Load(), slots)
			if peak.Load() > slots {
				t.Errorf("%d database connections seen, want at most %d", peak.Load(), slots)
			}

			closeAll(conns)
			conns = nil
			dbtest.Eventually(t, "the idle sockets gone from the server", func() bool { return f.srv.Sockets() == 0 })
		})
	}
	for _, mode := range []string{"sync", "async"} {
		if raw, ok := perSocket["raw"]; ok {
			t.Logf("%s: %+d B per idle socket over raw (target ≤ 2048)", mode, perSocket[mode]-raw)
		}
	}
}

// pollConns counts the server's connections in pg_stat_activity every
// 10 ms, keeping the peak, until stop is called.
func pollConns(t *testing.T, f *fixture) (peak *atomic.Int64, stop func()) {
	peak = new(atomic.Int64)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var n int64
			if err := f.env.Admin().QueryRowContext(ctx,
				"SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", f.env.AppName()).Scan(&n); err == nil {
				peak.Store(max(peak.Load(), n))
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	return peak, sync.OnceFunc(stop)
}

// closeAll closes sockets with a handshake, 16 at a time.
func closeAll(conns []*websocket.Conn) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < len(conns); i = int(next.Add(1)) - 1 {
				conns[i].CloseNow()
			}
		})
	}
	wg.Wait()
}

// commonStacks returns the top functions of the process's goroutines,
// the most common first, at most max of them, with their counts.
func commonStacks(max int) string {
	buf := make([]byte, 64<<20)
	buf = buf[:runtime.Stack(buf, true)]
	counts := map[string]int{}
	for _, g := range strings.Split(string(buf), "\n\n") {
		lines := strings.Split(g, "\n")
		if len(lines) > 1 {
			counts[strings.TrimSpace(lines[1])]++
		}
	}
	top := make([]string, 0, len(counts))
	for f := range counts {
		top = append(top, f)
	}
	sort.Slice(top, func(i, j int) bool { return counts[top[i]] > counts[top[j]] })
	var b strings.Builder
	for _, f := range top[:min(max, len(top))] {
		fmt.Fprintf(&b, "%6d %s\n", counts[f], f)
	}
	return b.String()
}
