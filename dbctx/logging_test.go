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

// A burst of units of work refused for want of a worker slot (ErrBusy) is
// logged as an outage is: the first refusal at once, with why, the
// others of the interval as one record with their count. An overloaded
// pool that answered 503 logged nothing before.
func TestBusyWarningsAggregated(t *testing.T) {
	t.Parallel()
	logs, logger := dbtest.NewLogs()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: 1, WaitTimeout: time.Minute, Logger: logger})
	p.SetLogInterval(100 * time.Millisecond)
	held, release := make(chan struct{}), make(chan struct{})
	holder := make(chan error, 1)
	go func() {
		holder <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			if err := s.Reserve(ctx); err != nil {
				return err
			}
			close(held)
			<-release
			return nil
		})
	}()
	<-held
	waiter := make(chan error, 1)
	go func() {
		waiter <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error { return s.Reserve(ctx) })
	}()
	eventually(t, "a caller queued", func() bool { return p.Stats().Waiting == 1 })
	const refused = 5
	for range refused {
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error { return s.Reserve(ctx) })
		if !errors.Is(err, dbctx.ErrBusy) {
			t.Fatalf("with the slot held and the queue full: %v, want ErrBusy", err)
		}
	}
	const msg = "dbctx: overloaded: units of work refused (ErrBusy), no worker slot free in time; " +
		"raise MaxWorkers where PostgreSQL has room, else shed load before it reaches the pool"
	if n := logs.Count(slog.LevelWarn, msg); n != 1 {
		t.Fatalf("%d records right after %d refusals, want 1:\n%s", n, refused, logs)
	}
	eventually(t, "the repeats reported", func() bool { return logs.Count(slog.LevelWarn, msg) == 2 })
	recs := logs.AtLeast(slog.LevelWarn)
	if len(recs) != 2 || recs[1].Attrs["repeated"] != "4" || recs[0].Attrs["max_workers"] != "1" || recs[0].Attrs["err"] == "" {
		t.Fatalf("want the first refusal with why, then one record of the 4 others:\n%s", logs)
	}
	close(release)
	if err := <-holder; err != nil {
		t.Fatal(err)
	}
	if err := <-waiter; err != nil {
		t.Fatal(err)
	}
}
