package dbprom_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

var appName = dbctx.NewSetting("application_name")

func selectOne(ctx context.Context, s *dbctx.Scope) error {
	var n int
	return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
}

// The pool's collector exports what Stats says at each scrape: after a
// few queries, a refusal and a discarded connection, the metrics say so,
// with the pool's labels, and lint clean.
func TestCollector(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, &dbctx.Options{
		MaxWorkers: 1,
		MaxWaiting: -1, // no queue: a second caller is refused at once
		Logger:     slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	c := dbprom.NewCollector(p, &dbprom.Options{ConstLabels: prometheus.Labels{"pool": "primary"}})
	ctx := context.Background()

	const queries = 3
	for i := range queries {
		// The first with a setting, which its connection did not carry.
		ctx := ctx
		if i == 0 {
			ctx = appName.With(ctx, "collector-test")
		}
		if err := p.Do(ctx, selectOne); err != nil {
			t.Fatal(err)
		}
	}
	// The one slot is held: a scope of its own is refused.
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if m := gather(t, c); m[`dbscope_slots_in_use{pool="primary"}`] != 1 {
			t.Errorf("slots in use while one is held: %v", m[`dbscope_slots_in_use{pool="primary"}`])
		}
		return p.Do(context.Background(), selectOne)
	})
	if !errors.Is(err, dbctx.ErrBusy) {
		t.Fatalf("a second scope with the only slot taken: %v, want ErrBusy", err)
	}
	// A panic with a connection pinned discards it.
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if err := selectOne(ctx, s); err != nil {
			return err
		}
		panic("discard the connection")
	})
	if pe := (*dbctx.PanicError)(nil); !errors.As(err, &pe) {
		t.Fatalf("Do with a panic: %v, want a *PanicError", err)
	}

	const want = `
# HELP dbscope_busy_total Callers refused with dbctx.ErrBusy: the wait queue was full or the wait timed out.
# TYPE dbscope_busy_total counter
dbscope_busy_total{pool="primary"} 1
# HELP dbscope_discarded_total Connections discarded (closed, never reused), by reason: dead before use, broken (a connection-level error), canceled mid-query, tx (a transaction that could not be rolled back), panic in user code, hook (OnAcquire or OnRelease failed), reset (the session reset failed), raw (handed to user code as itself), unresettable (state no reset undoes).
# TYPE dbscope_discarded_total counter
dbscope_discarded_total{pool="primary",reason="broken"} 0
dbscope_discarded_total{pool="primary",reason="canceled"} 0
dbscope_discarded_total{pool="primary",reason="dead"} 0
dbscope_discarded_total{pool="primary",reason="hook"} 0
dbscope_discarded_total{pool="primary",reason="panic"} 1
dbscope_discarded_total{pool="primary",reason="raw"} 0
dbscope_discarded_total{pool="primary",reason="reset"} 0
dbscope_discarded_total{pool="primary",reason="tx"} 0
dbscope_discarded_total{pool="primary",reason="unresettable"} 0
# HELP dbscope_pinned_connections Connections pinned by scopes now.
# TYPE dbscope_pinned_connections gauge
dbscope_pinned_connections{pool="primary"} 0
# HELP dbscope_slots Worker slots of the pool in all (dbctx.Options.MaxWorkers).
# TYPE dbscope_slots gauge
dbscope_slots{pool="primary"} 1
# HELP dbscope_slots_in_use Worker slots held now.
# TYPE dbscope_slots_in_use gauge
dbscope_slots_in_use{pool="primary"} 0
# HELP dbscope_waiting Callers queued for a worker slot now.
# TYPE dbscope_waiting gauge
dbscope_waiting{pool="primary"} 0
# HELP dbscope_waits_total Callers that had to queue for a worker slot.
# TYPE dbscope_waits_total counter
dbscope_waits_total{pool="primary"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"dbscope_busy_total", "dbscope_discarded_total", "dbscope_pinned_connections",
		"dbscope_slots", "dbscope_slots_in_use", "dbscope_waiting", "dbscope_waits_total"); err != nil {
		t.Error(err)
	}

	// The rest depend on how the pool reuses connections: each must be
	// what Stats says.
	m, st := gather(t, c), p.Stats()
	for name, v := range map[string]float64{
		"acquired_total":         float64(st.Acquired),
		"given_back_total":       float64(st.GivenBack),
		"retries_total":          float64(st.Retries),
		"resets_total":           float64(st.Resets),
		"sequence_resets_total":  float64(st.SequenceResets),
		"settings_applied_total": float64(st.Settings),
		"rolled_back_total":      float64(st.RolledBack),
		"leaks_total":            float64(st.Leaks),
	} {
		key := "dbscope_" + name + `{pool="primary"}`
		if got, ok := m[key]; !ok || got != v {
			t.Errorf("%s = %v (exported: %t), Stats says %v", key, got, ok, v)
		}
	}
	if st.Settings == 0 {
		t.Error("Stats().Settings = 0 after a unit that declared a setting")
	}
	if st.Acquired < queries+1 {
		t.Errorf("Stats().Acquired = %d after %d scopes that queried", st.Acquired, queries+1)
	}
	if _, ok := m[`dbscope_kept_connections{pool="primary"}`]; !ok {
		t.Error("dbscope_kept_connections not exported")
	}
	if n := len(m); n != 16+9+2+2+len(dbctx.WaitBuckets()) {
		t.Errorf("%d series, want 16, the 9 reasons of discarded_total, the 2 kinds of connect_errors_total and the wait histogram: %v", n, m)
	}

	lint(t, c)
}

// Options name the metrics and label them: pools told apart by their
// labels share a registry; a second collector with the same labels is
// refused by the registry, a label Prometheus refuses by NewCollector.
func TestCollectorOptions(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 2})
	q, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 5})

	m := gather(t, dbprom.NewCollector(p, &dbprom.Options{Namespace: "app"}))
	if m["app_slots"] != 2 || m[`app_discarded_total{reason="panic"}`] != 0 {
		t.Errorf("namespace app: %v", m)
	}

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(
		dbprom.NewCollector(p, &dbprom.Options{ConstLabels: prometheus.Labels{"pool": "primary"}}),
		dbprom.NewCollector(q, &dbprom.Options{ConstLabels: prometheus.Labels{"pool": "replica"}}),
	)
	const want = `
# HELP dbscope_slots Worker slots of the pool in all (dbctx.Options.MaxWorkers).
# TYPE dbscope_slots gauge
dbscope_slots{pool="primary"} 2
dbscope_slots{pool="replica"} 5
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "dbscope_slots"); err != nil {
		t.Error(err)
	}
	if err := reg.Register(dbprom.NewCollector(q, &dbprom.Options{ConstLabels: prometheus.Labels{"pool": "replica"}})); err == nil {
		t.Error("a second collector with the same labels registered")
	}

	for _, labels := range []prometheus.Labels{{"__reserved": "x"}, {"reason": "x"}} {
		func() {
			defer func() {
				if r, _ := recover().(string); !strings.HasPrefix(r, "dbprom: NewCollector: ") {
					t.Errorf("ConstLabels %v: panic %q, want one from dbprom", labels, r)
				}
			}()
			dbprom.NewCollector(p, &dbprom.Options{ConstLabels: labels})
		}()
	}
}

// The wait histogram counts the callers that queued, each in its bucket:
// one caller waits while another holds the only slot until the waiter is
// queued (Stats says so), then lets go.
func TestWaitHistogram(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1})
	c := dbprom.NewCollector(p, nil)
	ctx := context.Background()
	waited := make(chan error, 1)
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		go func() { waited <- p.Do(context.Background(), selectOne) }()
		dbtest.Eventually(t, "the second caller to queue", func() bool { return p.Stats().Waiting == 1 })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatal(err)
	}
	m, st := gather(t, c), p.Stats()
	if m["dbscope_wait_seconds_count"] != 1 || st.WaitCount != 1 {
		t.Fatalf("histogram count %v, Stats.WaitCount %d; want 1", m["dbscope_wait_seconds_count"], st.WaitCount)
	}
	if m["dbscope_wait_seconds_sum"] != st.WaitDuration.Seconds() {
		t.Errorf("sum %v, Stats says %v", m["dbscope_wait_seconds_sum"], st.WaitDuration.Seconds())
	}
	prev := 0.0
	for i, le := range dbctx.WaitBuckets() {
		key := fmt.Sprintf("dbscope_wait_seconds_bucket{le=%q}", fmt.Sprint(le.Seconds()))
		v, ok := m[key]
		if !ok || v < prev || v != float64(st.WaitsWithin[i]) {
			t.Errorf("%s = %v (exported %t), Stats says %d, previous bucket %v", key, v, ok, st.WaitsWithin[i], prev)
		}
		want := 0.0
		if st.WaitDuration <= le {
			want = 1
		}
		if v != want {
			t.Errorf("%s = %v for one wait of %v", key, v, st.WaitDuration)
		}
		prev = v
	}
	lint(t, c)
}

// Failed connects are exported by kind: a database that does not exist
// is a misconfiguration, a port where nothing listens an outage.
func TestCollectorConnectErrors(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the faults are injected in the connection string, which names PgBouncer")
	env := pgtest.New(t)
	missing, refused := env.MissingDatabase(t), env.Refused(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tc := range []struct {
		dsn       string
		misconf   float64
		unavail   float64
		failsWith error
	}{
		{missing, 2, 0, dbctx.ErrMisconfigured},
		{refused, 0, 2, dbctx.ErrUnavailable},
	} {
		db, err := sql.Open("pgx", tc.dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		p := dbctx.New(db, &dbctx.Options{Logger: quiet})
		defer p.Close()
		for range 2 {
			if err := p.Do(context.Background(), selectOne); !errors.Is(err, tc.failsWith) {
				t.Fatalf("got %v, want %v", err, tc.failsWith)
			}
		}
		m := gather(t, dbprom.NewCollector(p, nil))
		if m[`dbscope_connect_errors_total{kind="misconfigured"}`] != tc.misconf ||
			m[`dbscope_connect_errors_total{kind="unavailable"}`] != tc.unavail {
			t.Errorf("%v: misconfigured %v, unavailable %v; want %v, %v", tc.failsWith,
				m[`dbscope_connect_errors_total{kind="misconfigured"}`], m[`dbscope_connect_errors_total{kind="unavailable"}`],
				tc.misconf, tc.unavail)
		}
	}
}
