package faults_test

import (
	"testing"
	"time"

	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
)

// TestOverload sends 20× more concurrent clients than slots, each query
// holding its connection 20 ms, with a wait queue of 8× the slots (the
// default queue takes such a burst whole: see bench/burst): every message
// is answered or refused (websocket close 1013, HTTP 503), none hangs or
// fails otherwise, the database connections stay within the slots and
// memory stays bounded.
func TestOverload(t *testing.T) {
	const (
		slots     = 2
		clients   = 20 * slots
		messages  = 3
		maxGrowth = 64 << 20
	)
	for _, tc := range []struct{ mode, proto string }{
		{"sync", "ws"}, {"async", "ws"}, {"sync", "http"}, {"atomic", "http"},
	} {
		t.Run(tc.mode+"/"+tc.proto, func(t *testing.T) {
			f := start(t, itemserver.Config{Mode: tc.mode, MaxWorkers: slots, MaxWaiting: 8 * slots, TestOps: true}, nil)
			base := heapNow()
			res := f.load(loadgen.Config{
				Proto: tc.proto, Clients: clients, Messages: messages, Sleep: 0.02, Timeout: 10 * time.Second,
			})
			logResult(t, res)
			noFailures(t, res)
			if res.ErrorReplies != 0 {
				t.Errorf("%d error replies: %q", res.ErrorReplies, res.FirstErrors)
			}
			if res.Replies+res.Busy != clients*messages {
				t.Errorf("%d answered + %d refused, want %d in all", res.Replies, res.Busy, clients*messages)
			}
			if res.Replies == 0 || res.Busy == 0 {
				t.Errorf("%d answered, %d refused: want both (slots contended)", res.Replies, res.Busy)
			}
			if res.PeakDBConns > slots {
				t.Errorf("%d database connections seen, want at most %d", res.PeakDBConns, slots)
			}
			growth := res.InProcessPeak - base
			t.Logf("memory: %d KiB over the start, at peak", growth>>10)
			if growth > maxGrowth {
				t.Errorf("memory grew by %d MiB, want under %d MiB", growth>>20, maxGrowth>>20)
			}
		})
	}
}
