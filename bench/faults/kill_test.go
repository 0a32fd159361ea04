package faults_test

import (
	"testing"
	"time"

	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
)

// TestKillUnderLoad terminates every backend of the server each 200 ms
// for 3 s while 4 clients send messages. Only a message in flight on a
// killed backend may fail, with an error reply (under middleware.Atomic,
// a 503 with Retry-After: its transaction was lost, nothing committed):
// no socket breaks, there are no more failures than backends killed, and
// the pool refuses nothing as busy. Raw runs as the baseline and is
// logged, not held to that.
func TestKillUnderLoad(t *testing.T) {
	for _, tc := range []struct{ mode, proto string }{
		{"raw", "ws"}, {"sync", "ws"}, {"async", "ws"}, {"sync", "http"}, {"atomic", "http"},
	} {
		t.Run(tc.mode+"/"+tc.proto, func(t *testing.T) {
			f := start(t, itemserver.Config{Mode: tc.mode}, nil)
			res := f.load(loadgen.Config{
				Proto: tc.proto, Clients: 4, Messages: 1 << 20, Duration: 3 * time.Second,
				KillEvery: 200 * time.Millisecond,
			})
			logResult(t, res)
			t.Logf("%s/%s: %d error replies for %d backends killed (%d of them in use) in %d rounds: %.3f per kill",
				tc.mode, tc.proto, res.ErrorReplies, res.Killed, res.KilledInUse, res.KillRounds, res.ErrorsPerKill)
			if tc.mode == "raw" {
				return
			}
			noFailures(t, res)
			if res.Killed == 0 || res.Replies == 0 {
				t.Fatalf("nothing killed (%d) or nothing answered (%d)", res.Killed, res.Replies)
			}
			lost := res.ErrorReplies
			if tc.mode == "atomic" {
				lost += res.Busy // 503: the transaction lost with its backend
			} else if res.Busy != 0 {
				t.Errorf("%d refused as busy", res.Busy)
			}
			if lost > res.Killed {
				t.Errorf("%d failed replies for %d backends killed", lost, res.Killed)
			}
			if n := f.srv.Pool().Stats().Busy; n != 0 {
				t.Errorf("the pool refused %d units as busy", n)
			}
		})
	}
}

// TestKillIdle terminates the server's backends while they sit idle in
// the pool, between bursts of messages: a connection killed while idle
// must cost no message (dbscope checks each connection before use). Raw
// runs as the baseline and is logged.
func TestKillIdle(t *testing.T) {
	const rounds = 8
	for _, tc := range []struct{ mode, proto string }{
		{"raw", "ws"}, {"sync", "ws"}, {"async", "ws"}, {"sync", "http"}, {"atomic", "http"},
	} {
		t.Run(tc.mode+"/"+tc.proto, func(t *testing.T) {
			f := start(t, itemserver.Config{Mode: tc.mode}, nil)
			var errs, killed int64
			for range rounds {
				res := f.load(loadgen.Config{Proto: tc.proto, Clients: 4, Messages: 10, SampleEvery: time.Second})
				if tc.mode != "raw" {
					noFailures(t, res)
				}
				errs += res.ErrorReplies
				// Terminate waits until the backends are gone: they are
				// idle, and dead, when the next burst starts.
				killed += int64(f.env.Terminate(t))
			}
			t.Logf("%s/%s: %d error replies for %d backends killed while idle", tc.mode, tc.proto, errs, killed)
			if killed == 0 {
				t.Fatal("nothing killed")
			}
			if tc.mode != "raw" && errs != 0 {
				t.Errorf("%d error replies for connections killed while idle, want 0", errs)
			}
		})
	}
}
