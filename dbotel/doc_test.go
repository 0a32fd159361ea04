package dbotel_test

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/internal/dbtest"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// RegisterMetrics' doc lists every metric it reports, with every value of
// its attribute (the pool's name aside), and nothing it does not report;
// PoolOptions' wait histogram is named there too.
func TestDocListsEveryMetric(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^//\t((?:db\.client|dbscope\.pool)\.[a-z_.]+[a-z_])(?:\{([a-z_.]+)=([a-z_|]+)\})?`)
	documented := map[string]bool{"db.client.connection.wait_time": true} // named in the prose
	for _, m := range line.FindAllStringSubmatch(string(src), -1) {
		if m[2] == "" {
			documented[m[1]] = true
			continue
		}
		for _, v := range strings.Split(m[3], "|") {
			documented[m[1]+"{"+m[2]+"="+v+"}"] = true
		}
	}

	tel := newTelemetry(t)
	p, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1}, 0)
	reg, err := dbotel.RegisterMetrics(p, tel.opts)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	// A caller that queues, for the wait histogram.
	release := holdSlot(t, p)
	waited := make(chan error, 1)
	go func() { waited <- p.Do(context.Background(), func(context.Context, *dbctx.Scope) error { return nil }) }()
	dbtest.Eventually(t, "the caller to queue", func() bool { return p.Stats().Waiting == 1 })
	release()
	if err := <-waited; err != nil {
		t.Fatal(err)
	}

	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	key := func(name string, attrs attribute.Set) string {
		for _, kv := range attrs.ToSlice() {
			if kv.Key != "db.client.connection.pool.name" {
				name += "{" + string(kv.Key) + "=" + kv.Value.AsString() + "}"
			}
		}
		return name
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, dp := range d.DataPoints {
					exported[key(m.Name, dp.Attributes)] = true
				}
			case metricdata.Gauge[int64]:
				for _, dp := range d.DataPoints {
					exported[key(m.Name, dp.Attributes)] = true
				}
			case metricdata.Histogram[float64]:
				for _, dp := range d.DataPoints {
					exported[key(m.Name, dp.Attributes)] = true
				}
			default:
				t.Errorf("%s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	for k := range exported {
		if !documented[k] {
			t.Errorf("reported, not in RegisterMetrics' doc: %s", k)
		}
	}
	for k := range documented {
		if !exported[k] {
			t.Errorf("in RegisterMetrics' doc, not reported: %s", k)
		}
	}
	if t.Failed() {
		keys := func(m map[string]bool) []string {
			var s []string
			for k := range m {
				s = append(s, k)
			}
			slices.Sort(s)
			return s
		}
		t.Logf("documented: %v\nreported: %v", keys(documented), keys(exported))
	}
}
