package dbctx_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// During an outage every connect fails: the first failure is logged at
// once, the others of the interval as one record with their count and
// the first's cause; an interval with none ends the burst, and the next
// failure is logged at once again. (Dirty sessions left on connections
// killed by the outage log nothing: their reset is owed by the next user,
// who finds the connection dead and discards it.)
func TestOutageWarningsAggregated(t *testing.T) {
	t.Parallel()
	const scopes = 8
	logs, logger := dbtest.NewLogs()
	env := newEnv(t)
	db := openDSN(t, env.Refused(t)) // the server is down
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: scopes, Logger: logger})
	p.SetLogInterval(100 * time.Millisecond)
	const msg = "dbctx: database unavailable"
	outage := func(n int) {
		t.Helper()
		for range n {
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			})
			if !errors.Is(err, dbctx.ErrUnavailable) {
				t.Fatalf("with the server down: %v, want ErrUnavailable", err)
			}
		}
	}
	outage(scopes)
	if n := logs.Count(slog.LevelWarn, msg); n != 1 {
		t.Fatalf("%d records right after %d failed connects, want 1:\n%s", n, scopes, logs)
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
