package dbprom_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// The layer's collector exports what Stats says at each scrape, and the
// notification queue's usage only for PostgreSQL, once sampled.
func TestGroupsCollector(t *testing.T) {
	t.Parallel()
	t.Run("memory", func(t *testing.T) {
		t.Parallel()
		l := newLayer(t, groups.NewMemory())
		c := dbprom.NewGroupsCollector(l, nil)
		ctx := context.Background()
		m := l.NewMember(func(groups.Event) {}, nil)
		defer m.Close()
		for _, g := range []string{"room.1", "room.2"} {
			if err := m.Join(ctx, g); err != nil {
				t.Fatal(err)
			}
		}
		for range 2 {
			if err := l.Send(ctx, "room.2", []byte("hi")); err != nil {
				t.Fatal(err)
			}
		}
		dbtest.Eventually(t, "the member to handle the messages", func() bool { return l.Stats().Delivered == 2 })

		const want = `
# HELP dbscope_groups_delivered_total Events members handled.
# TYPE dbscope_groups_delivered_total counter
dbscope_groups_delivered_total 2
# HELP dbscope_groups_gaps_total Gap events queued to members: the engine may have lost messages.
# TYPE dbscope_groups_gaps_total counter
dbscope_groups_gaps_total 0
# HELP dbscope_groups_groups Groups with members in this process now.
# TYPE dbscope_groups_groups gauge
dbscope_groups_groups 2
# HELP dbscope_groups_members Members now, each counted once whatever its groups.
# TYPE dbscope_groups_members gauge
dbscope_groups_members 1
# HELP dbscope_groups_reconnects_total Reconnections of the engine.
# TYPE dbscope_groups_reconnects_total counter
dbscope_groups_reconnects_total 0
# HELP dbscope_groups_sent_total Messages sent; one inside a transaction is counted at its commit, not if it rolls back.
# TYPE dbscope_groups_sent_total counter
dbscope_groups_sent_total 2
# HELP dbscope_groups_slow_total Members that fell behind their queue, told and dropped.
# TYPE dbscope_groups_slow_total counter
dbscope_groups_slow_total 0
`
		// No metric name given: the whole output, with nothing of an engine.
		if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
			t.Error(err)
		}
		lint(t, c)
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		env := pgtest.New(t)
		p := dbctx.New(env.Open(t), &dbctx.Options{MaxWorkers: 2})
		t.Cleanup(func() { p.Close() }) // after the layer's
		e := groups.NewPostgres(p, &groups.PostgresOptions{
			ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), SampleEvery: 50 * time.Millisecond,
		})
		l := newLayer(t, e)
		c := dbprom.NewGroupsCollector(l, &dbprom.Options{Namespace: "app"})
		pc := dbprom.NewPostgresCollector(e, &dbprom.Options{Namespace: "app"})
		// One message past NOTIFY's limit, through the table.
		ctx := context.Background()
		mb := l.NewMember(func(groups.Event) {}, nil)
		defer mb.Close()
		if err := mb.Join(ctx, "big"); err != nil {
			t.Fatal(err)
		}
		if err := l.Send(ctx, "big", []byte(strings.Repeat("x", 10000))); err != nil {
			t.Fatal(err)
		}
		dbtest.Eventually(t, "the queue usage to be sampled, the large message read", func() bool {
			st := e.Stats()
			return st.QueueUsage >= 0 && st.LargeReceived == 1
		})
		m := gather(t, c)
		if len(m) != 7 {
			t.Errorf("the layer's collector: %d series, want 7: %v", len(m), m)
		}
		m = gather(t, pc)
		if u, ok := m["app_groups_notification_queue_usage_ratio"]; !ok || u < 0 || u > 1 {
			t.Errorf("app_groups_notification_queue_usage_ratio = %v (exported: %t), want 0 to 1", u, ok)
		}
		if m[`app_groups_large_messages_total{event="sent"}`] != 1 || m[`app_groups_large_messages_total{event="received"}`] != 1 ||
			m[`app_groups_large_bytes_total{event="received"}`] <= 10000 {
			t.Errorf("the large message not counted: %v", m)
		}
		if len(m) != 6 {
			t.Errorf("the engine's collector: %d series, want 6: %v", len(m), m)
		}
		lint(t, c)
		lint(t, pc)
	})
}

func newLayer(t *testing.T, e groups.Engine) *groups.Layer {
	t.Helper()
	l, err := groups.New(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}
