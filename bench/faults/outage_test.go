package faults_test

import (
	"testing"
	"time"

	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// TestOutage cuts the server off PostgreSQL for 2 s (a TCP proxy closes
// every connection and refuses new ones) while clients keep sending, then
// lets it through again. During the outage every message fails fast, with
// an error reply or a refusal (dbctx.ErrUnavailable: 503) within the
// pool's wait timeout plus the connect timeout, and no socket breaks;
// afterwards the service is back by itself.
func TestOutage(t *testing.T) {
	const (
		waitTimeout    = time.Second
		connectTimeout = time.Second
		slack          = time.Second // the race detector, a loaded machine
	)
	for _, tc := range []struct{ mode, proto string }{
		{"sync", "ws"}, {"async", "ws"}, {"sync", "http"}, {"atomic", "http"},
	} {
		t.Run(tc.mode+"/"+tc.proto, func(t *testing.T) {
			env := pgtest.New(t)
			proxy := pgtest.NewProxy(t, env)
			dsn, err := pgserver.WithParams(proxy.DSN(), "connect_timeout", "1")
			if err != nil {
				t.Fatal(err)
			}
			f := start(t, itemserver.Config{Mode: tc.mode, DSN: dsn, WaitTimeout: waitTimeout}, env)
			healthy := func(what string) {
				res := f.load(loadgen.Config{Proto: tc.proto, Clients: 4, Messages: 50})
				noFailures(t, res)
				if res.ErrorReplies != 0 {
					t.Errorf("%s: %d error replies: %q", what, res.ErrorReplies, res.FirstErrors)
				}
			}
			healthy("before the outage")

			proxy.Cut()
			res := f.load(loadgen.Config{
				Proto: tc.proto, Clients: 4, Messages: 1 << 20, Duration: 2 * time.Second, Timeout: 10 * time.Second,
			})
			proxy.Restore()
			logResult(t, res)
			noFailures(t, res)
			// An answer is an error reply, or a refusal (503, 1013: the
			// pool reports the database unavailable, as middleware.Atomic
			// answers it).
			if res.ErrorReplies+res.Busy == 0 || res.ErrorReplies != res.Replies {
				t.Errorf("during the outage: %d error replies of %d answers (%d refused), want all",
					res.ErrorReplies, res.Replies, res.Busy)
			}
			if limit := waitTimeout + connectTimeout + slack; time.Duration(res.MaxMicros)*time.Microsecond > limit {
				t.Errorf("slowest failure took %dµs, want under %v", res.MaxMicros, limit)
			}

			dbtest.Eventually(t, "the service back after the outage", func() bool {
				r := f.load(loadgen.Config{Proto: tc.proto, Clients: 1, Messages: 1})
				return r.Replies == 1 && r.ErrorReplies == 0
			})
			healthy("after the outage")
		})
	}
}
