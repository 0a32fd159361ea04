package faults_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// fixture is one scenario: an in-process item server over a schema of its
// own, checked and stopped at the end of the test.
type fixture struct {
	t          *testing.T
	env        *pgtest.Env
	srv        *itemserver.Server
	goroutines int
}

// start starts a server of cfg on 127.0.0.1:0 over env (a fresh one when
// nil) and registers the end-of-scenario checks: the pool holds nothing,
// nothing is idle in a transaction, and once the server is shut down the
// goroutine count is back to what it was before the server started.
// Scenarios run one at a time (no t.Parallel) so that the count means
// something.
func start(t *testing.T, cfg itemserver.Config, env *pgtest.Env) *fixture {
	t.Helper()
	if env == nil {
		env = pgtest.New(t)
	}
	if cfg.DSN == "" {
		cfg.DSN = env.DSN()
	}
	cfg.App = env.AppName()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	f := &fixture{t: t, env: env, goroutines: runtime.NumGoroutine()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := itemserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.srv = srv
	t.Cleanup(f.stop)
	return f
}

// stop checks the invariants after the scenario and shuts the server
// down.
func (f *fixture) stop() {
	t := f.t
	if p := f.srv.Pool(); p != nil {
		// Sockets the clients closed may still be disconnecting.
		dbtest.Eventually(t, "pool stats at zero", func() bool {
			st := p.Stats()
			return st.InUse == 0 && st.Pinned == 0 && st.Waiting == 0
		})
		dbtest.Clean(t, p, f.env)
		t.Logf("pool: %+v", p.Stats())
	} else if n := f.env.IdleInTransaction(t); n != 0 {
		t.Errorf("%d connections idle in transaction", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := f.srv.Shutdown(ctx); err != nil {
		t.Errorf("shutdown: %v", err)
	}
	// The shared admin pool's connections stay open and may each hold a
	// goroutine of pgx's (a background reader started when a write was
	// slow, on a busy machine): closing them leaves only the server's to
	// count.
	adm := f.env.Admin()
	adm.SetMaxIdleConns(0)
	adm.SetMaxIdleConns(4) // pgtest's setting
	// pgx closes a broken connection on a goroutine of its own
	// (pgconn's asyncClose: a cancel request, Terminate, then a drain of
	// what the server still sends), bounded by 15 s: the raw server's,
	// after its backends were killed, may outlive 10 s on a loaded
	// machine (CI, over TLS).
	deadline := time.Now().Add(30 * time.Second)
	for runtime.NumGoroutine() > f.goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("goroutines not back to their start (%d > %d):\n%s",
				runtime.NumGoroutine(), f.goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// load runs cfg against the server, the server's connections watched in
// pg_stat_activity.
func (f *fixture) load(cfg loadgen.Config) loadgen.Result {
	f.t.Helper()
	cfg.URL = f.srv.URL()
	cfg.Admin = f.env.Admin()
	cfg.App = f.env.AppName()
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	res, err := loadgen.Run(context.Background(), cfg)
	if err != nil {
		f.t.Fatal(err)
	}
	return res
}

// logResult logs a run's result as its JSON line.
func logResult(t *testing.T, res loadgen.Result) {
	t.Helper()
	b, _ := json.Marshal(res)
	t.Logf("%s", b)
}

// heapNow returns the Go runtime's heap and stack in use, after a GC.
func heapNow() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

// noFailures fails t for answers lost or wrong: broken sockets, hangs,
// wrong replies, dial errors.
func noFailures(t *testing.T, res loadgen.Result) {
	t.Helper()
	if res.Broken != 0 || res.Hung != 0 || res.Wrong != 0 || res.DialErrors != 0 {
		t.Errorf("broken %d, hung %d, wrong %d, dial errors %d; first: %q",
			res.Broken, res.Hung, res.Wrong, res.DialErrors, res.FirstErrors)
	}
}
