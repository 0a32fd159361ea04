package faults_test

import (
	"context"
	"net"
	"net/http"
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

// TestSlowClients runs clients that never read beside normal ones: each
// sends a message every 5 ms asking for a 64 KiB reply, so that the
// buffers between it and the server fill within a second. The server's
// write timeout drops the slow sockets by itself, its memory stays
// bounded, and the normal clients get every answer (their latency beside
// the slow clients is logged against a run without them).
func TestSlowClients(t *testing.T) {
	const (
		slow      = 4        // fewer than the slots: see the sync style's note in bench/README.md
		maxGrowth = 16 << 20 // the slow clients ask for about 14 MiB each
	)
	for _, mode := range []string{"sync", "async"} {
		t.Run(mode, func(t *testing.T) {
			f := start(t, itemserver.Config{Mode: mode, WriteTimeout: time.Second, TestOps: true}, nil)
			alone := f.load(loadgen.Config{Clients: 4, Messages: 1 << 20, Duration: time.Second})
			base := heapNow()
			stopLive := peakLive()
			sent := make([]int, slow)
			var wg sync.WaitGroup
			for i := range slow {
				wg.Go(func() { sent[i] = flood(t, f.srv.URL()) })
			}
			res := f.load(loadgen.Config{Clients: 4, Messages: 1 << 20, Duration: 3 * time.Second})
			logResult(t, res)
			noFailures(t, res)
			if res.ErrorReplies != 0 || res.Busy != 0 {
				t.Errorf("%d error replies, %d refused: %q", res.ErrorReplies, res.Busy, res.FirstErrors)
			}
			// The slow clients keep their sockets open: only the server
			// can have closed them.
			dbtest.Eventually(t, "the server dropping the slow sockets", func() bool { return f.srv.Sockets() == 0 })
			wg.Wait()
			growth := stopLive() - base
			t.Logf("%s: slow clients sent %v messages each before the server dropped them; live memory %d KiB over the start at peak; normal clients: p50 %dµs, p99 %dµs, max %dµs, %.0f msgs/s (alone: p50 %dµs, p99 %dµs, %.0f msgs/s)",
				mode, sent, growth>>10, res.P50Micros, res.P99Micros, res.MaxMicros, res.MsgsPerS, alone.P50Micros, alone.P99Micros, alone.MsgsPerS)
			if growth > maxGrowth {
				t.Errorf("memory grew by %d MiB, want under %d MiB", growth>>20, maxGrowth>>20)
			}
		})
	}
}

// flood opens a websocket with a small receive buffer and sends a message
// asking for a 64 KiB reply every 5 ms without ever reading, until a
// write fails (the server dropped the socket) or a bound of count or time
// is reached. It returns how many it sent.
func flood(t *testing.T, base string) int {
	d := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		rc.Control(func(fd uintptr) {
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 2048)
		})
		return err
	}}
	tr := &http.Transport{DialContext: d.DialContext}
	defer tr.CloseIdleConnections()
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(base, "http")+"/ws/items",
		&websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Error(err)
		return 0
	}
	defer c.CloseNow()
	deadline := time.Now().Add(20 * time.Second)
	n := 0
	for ; n < 4000 && time.Now().Before(deadline); n++ {
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := c.Write(wctx, websocket.MessageText, []byte(`{"id":1,"pad":65536}`))
		cancel()
		if err != nil {
			break
		}
		time.Sleep(5 * time.Millisecond) // pacing the sender, not synchronization
	}
	return n
}

// peakLive samples the live heap and stacks (after a GC) every 100 ms
// until the returned function is called, which returns the peak. Garbage
// left by the padded replies would swamp a sample without a GC.
func peakLive() (stop func() int64) {
	var peak atomic.Int64
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			peak.Store(max(peak.Load(), heapNow()))
			select {
			case <-done:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return func() int64 { close(done); <-stopped; return peak.Load() }
}
