package dbctx_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// During an outage every scope that ends with a dirty connection fails
// its session reset: the first failure is logged at once, the others of
// the interval as one record with their count and the first's cause; an
// interval with none ends the burst, and the next failure is logged at
// once again.
func TestOutageWarningsAggregated(t *testing.T) {
	t.Parallel()
	const scopes = 8
	logs, logger := dbtest.NewLogs()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: scopes, Logger: logger})
	p.SetLogInterval(100 * time.Millisecond)
	const msg = "dbctx: ending scope"
	outage := func(n int) {
		t.Helper()
		var ss []*dbctx.Scope
		for range n {
			ctx, s := p.Scope(context.Background())
			// Dirty: its session is reset at the end.
			if _, err := s.ExecContext(ctx, "SELECT set_config('app.x', '1', false)"); err != nil {
				t.Fatal(err)
			}
			ss = append(ss, s)
		}
		env.Terminate(t)
		for _, s := range ss {
			s.End()
		}
	}
	outage(scopes)
	if n := logs.Count(slog.LevelWarn, msg); n != 1 {
		t.Fatalf("%d records right after %d failed resets, want 1:\n%s", n, scopes, logs)
	}
	eventually(t, "the repeats reported", func() bool { return logs.Count(slog.LevelWarn, msg) == 2 })
	recs := logs.AtLeast(slog.LevelWarn)
	if len(recs) != 2 || recs[1].Attrs["repeated"] != "7" || recs[1].Attrs["err"] == "" {
		t.Fatalf("want the first failure, then one record of the 7 others with the cause:\n%s", logs)
	}
	eventually(t, "the burst over", func() bool { return p.Bursts() == 0 })
	outage(1)
	if n := logs.Count(slog.LevelWarn, msg); n != 3 {
		t.Fatalf("a failure after a quiet interval: %d records, want 3:\n%s", n, logs)
	}
}
