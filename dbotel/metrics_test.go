package dbotel_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// points reads tel's metrics: each data point's value by metric name and
// db.client.connection.state (where it has one), and the wait histogram.
func (tel *telemetry) points(t *testing.T) (map[string]int64, *metricdata.HistogramDataPoint[float64]) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	var hist *metricdata.HistogramDataPoint[float64]
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			check := func(attrs attribute.Set) string {
				if v, _ := attrs.Value("db.client.connection.pool.name"); v.AsString() != "test" {
					t.Errorf("%s: pool name %q", m.Name, v.AsString())
				}
				key := m.Name
				for _, a := range []attribute.Key{"db.client.connection.state", "dbscope.connect_error.cause", "dbscope.discard.reason"} {
					if v, ok := attrs.Value(a); ok {
						key += "{" + v.AsString() + "}"
					}
				}
				return key
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					out[check(dp.Attributes)] = dp.Value
				}
			case metricdata.Histogram[float64]:
				for i := range d.DataPoints {
					check(d.DataPoints[i].Attributes)
					hist = &d.DataPoints[i]
				}
			default:
				t.Fatalf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	return out, hist
}

// The pool's metrics, read back against its Stats and its *sql.DB's.
func TestMetrics(t *testing.T) {
	t.Parallel()
	tel := newTelemetry(t)
	p, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1, WaitTimeout: 100 * time.Millisecond}, 0)
	reg, err := dbotel.RegisterMetrics(p, tel.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	nop := func(context.Context, *dbctx.Scope) error { return nil }

	// Compared while nothing moves: one scope pins the one connection,
	// one caller waits for the slot.
	release := holdSlot(t, p)
	waited := make(chan error, 1)
	go func() { waited <- p.Do(context.Background(), nop) }()
	dbtest.Eventually(t, "a caller to queue", func() bool { return p.Stats().Waiting == 1 })
	got, _ := tel.points(t)
	st, db := p.Stats(), p.DB().Stats()
	want := map[string]int64{
		"db.client.connection.count{used}":      int64(st.Pinned), // 1
		"db.client.connection.count{idle}":      int64(db.Idle + st.Kept),
		"db.client.connection.max":              int64(db.MaxOpenConnections), // MaxWorkers, set by New
		"db.client.connection.pending_requests": int64(st.Waiting),
		"db.client.connection.timeouts":         st.Busy,
	}
	if st.Pinned != 1 || db.MaxOpenConnections != 1 {
		t.Fatalf("not the state the test means to read: %+v, %+v", st, db)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d (stats %+v, *sql.DB %+v)", k, got[k], v, st, db)
		}
	}

	// The wait times out: a timeout, and a wait recorded.
	if err := <-waited; !errors.Is(err, dbctx.ErrBusy) {
		t.Fatalf("the wait ended with %v, want ErrBusy", err)
	}
	// And one that is granted.
	go func() { waited <- p.Do(context.Background(), nop) }()
	dbtest.Eventually(t, "a caller to queue", func() bool { return p.Stats().Waiting == 1 })
	release()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	got, hist := tel.points(t)
	st = p.Stats()
	if got["db.client.connection.timeouts"] != 1 || st.Busy != 1 || got["db.client.connection.pending_requests"] != 0 {
		t.Errorf("timeouts %d, pending %d; stats %+v", got["db.client.connection.timeouts"], got["db.client.connection.pending_requests"], st)
	}
	// The histogram holds each wait, in the buckets of Stats.WaitsWithin.
	if hist == nil || hist.Count != uint64(st.WaitCount) || st.WaitCount != 2 ||
		time.Duration(hist.Sum*float64(time.Second)).Round(time.Microsecond) != st.WaitDuration.Round(time.Microsecond) {
		t.Fatalf("wait_time %+v; stats %+v", hist, st)
	}
	bounds := dbctx.WaitBuckets()
	var within uint64
	for i, b := range bounds {
		if hist.Bounds[i] != b.Seconds() {
			t.Fatalf("bounds %v, want %v", hist.Bounds, bounds)
		}
		within += hist.BucketCounts[i]
		if within != uint64(st.WaitsWithin[i]) {
			t.Errorf("waits within %v: %d, Stats %d", b, within, st.WaitsWithin[i])
		}
	}
}

// dbscope's own counters, read back against the pool's Stats after work
// that moves each: scopes, a reset owed by a SET, a declared setting,
// raw access (a connection discarded).
func TestOwnMetrics(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "asserts what dbscope sends on a direct connection: behind a pooler the pool finds it, and sends the settings per transaction")
	tel := newTelemetry(t)
	p, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1}, 0)
	reg, err := dbotel.RegisterMetrics(p, tel.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	ctx := context.Background()
	tenant := dbctx.NewSetting("app.tenant")
	units := []func(context.Context, *dbctx.Scope) error{
		func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SET application_name = 'dirty'")
			return err
		},
		func(ctx context.Context, s *dbctx.Scope) error { _, err := s.ExecContext(ctx, "SELECT 1"); return err },
		func(ctx context.Context, s *dbctx.Scope) error {
			return s.Pgx(ctx, func(c *pgx.Conn) error { _, err := c.Exec(ctx, "SELECT 1"); return err })
		},
	}
	for _, u := range units {
		if err := p.Do(tenant.With(ctx, "t1"), u); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := tel.points(t)
	st := p.Stats()
	if st.Acquired == 0 || st.Resets == 0 || st.Settings == 0 || st.Discarded.Raw == 0 {
		t.Fatalf("the work moved not every counter the test reads: %+v", st)
	}
	want := map[string]int64{
		"dbscope.pool.acquired":                    st.Acquired,
		"dbscope.pool.retries":                     st.Retries,
		"dbscope.pool.resets":                      st.Resets,
		"dbscope.pool.sequence_resets":             st.SequenceResets,
		"dbscope.pool.settings_applied":            st.Settings,
		"dbscope.pool.outcomes_unknown":            st.OutcomesUnknown,
		"dbscope.pool.rolled_back":                 st.RolledBack,
		"dbscope.pool.leaks":                       st.Leaks,
		"dbscope.pool.connect_errors{unavailable}": st.Unavailable,
		"dbscope.pool.discarded{raw}":              st.Discarded.Raw,
	}
	var discarded int64
	for k, v := range got {
		if strings.HasPrefix(k, "dbscope.pool.discarded{") {
			discarded += v
		}
	}
	if discarded != st.Discarded.Total() {
		t.Errorf("dbscope.pool.discarded sums to %d, Stats %d: a reason missing", discarded, st.Discarded.Total())
	}
	for k, v := range want {
		if n, ok := got[k]; !ok || n != v {
			t.Errorf("%s = %d (reported %v), want %d (stats %+v)", k, n, ok, v, st)
		}
	}
}

// A pool on a database that does not exist: connect_errors, by cause.
func TestOwnMetricsMisconfigured(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the fault is in the connection string, which names PgBouncer")
	tel := newTelemetry(t)
	env := pgtest.New(t)
	db, err := sql.Open("pgx", env.MissingDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	bad := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, Logger: slog.New(slog.DiscardHandler)})
	t.Cleanup(func() { bad.Close() })
	reg, err := dbotel.RegisterMetrics(bad, tel.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	nop := func(ctx context.Context, s *dbctx.Scope) error { _, err := s.ExecContext(ctx, "SELECT 1"); return err }
	if err := bad.Do(context.Background(), nop); !errors.Is(err, dbctx.ErrMisconfigured) {
		t.Fatalf("a database that does not exist: %v, want ErrMisconfigured", err)
	}
	got, _ := tel.points(t)
	if n := got["dbscope.pool.connect_errors{misconfigured}"]; n != 1 || got["dbscope.pool.connect_errors{unavailable}"] != 0 {
		t.Errorf("connect_errors: misconfigured %d, unavailable %d; want 1, 0", n, got["dbscope.pool.connect_errors{unavailable}"])
	}
}

// Two pools registered under one name on one MeterProvider would have
// their series added together: the second registration fails, saying so,
// until the first is unregistered. Under names of their own both register.
func TestRegisterMetricsNameTaken(t *testing.T) {
	t.Parallel()
	tel := newTelemetry(t)
	p1, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1}, 0)
	p2, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1}, 0)
	reg, err := dbotel.RegisterMetrics(p1, tel.opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dbotel.RegisterMetrics(p2, tel.opts); err == nil || !strings.Contains(err.Error(), "registered already") {
		t.Fatalf("a second pool under the same name: %v, want an error", err)
	}
	other := *tel.opts
	other.PoolName = "replica"
	reg2, err := dbotel.RegisterMetrics(p2, &other)
	if err != nil {
		t.Fatalf("under a name of its own: %v", err)
	}
	defer reg2.Unregister()
	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	reg3, err := dbotel.RegisterMetrics(p2, tel.opts)
	if err != nil {
		t.Fatalf("the name once unregistered: %v", err)
	}
	reg3.Unregister()
}

// A wait is recorded, and told to the span, even where the OnWait the
// pool had already panics (dbctx logs that and goes on): the histogram
// missed it.
func TestWaitRecordedWhenWrappedHookPanics(t *testing.T) {
	t.Parallel()
	tel := newTelemetry(t)
	p, _ := tel.newPool(t, &dbctx.Options{
		MaxWorkers: 1,
		Logger:     slog.New(slog.DiscardHandler),
		OnWait:     func(context.Context, dbctx.Wait) { panic("the wrapped hook's bug") },
		OnPin:      func(context.Context, dbctx.Pin) { panic("the wrapped hook's bug") },
	}, 0)
	release := holdSlot(t, p)
	waited := make(chan error, 1)
	go func() {
		waited <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.Exec(ctx, "SELECT 1")
			return err
		})
	}()
	dbtest.Eventually(t, "a caller to queue", func() bool { return p.Stats().Waiting == 1 })
	release()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	_, hist := tel.points(t)
	if st := p.Stats(); hist == nil || st.WaitCount != 1 || hist.Count != 1 {
		t.Fatalf("wait_time %+v, Stats.WaitCount %d: want the one wait", hist, st.WaitCount)
	}
	// Both Do spans have ended (each before its Do returned): the
	// waiter's is the one with a wait.
	var waits, pins int
	for _, s := range tel.ended() {
		if s.Name() == dbotel.SpanDo {
			waits += len(events(s, dbotel.EventWait))
			pins += len(events(s, dbotel.EventPin))
		}
	}
	if waits != 1 || pins != 2 {
		t.Fatalf("%d wait events, %d pin events on the Do spans; want 1 and 2:\n%s", waits, pins, dump(tel.ended()))
	}
}
