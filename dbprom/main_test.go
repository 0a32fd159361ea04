package dbprom_test

import (
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// gather collects c through a pedantic registry, which also checks that
// what c collects matches what it describes, and returns every series'
// value by name and labels, as in `dbscope_busy_total{pool="a"}`.
func gather(t *testing.T, c prometheus.Collector) map[string]float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			if len(m.GetLabel()) > 0 {
				key += "{"
				for i, l := range m.GetLabel() {
					if i > 0 {
						key += ","
					}
					key += l.GetName() + "=\"" + l.GetValue() + "\""
				}
				key += "}"
			}
			switch {
			case m.Counter != nil:
				out[key] = m.Counter.GetValue()
			case m.Gauge != nil:
				out[key] = m.Gauge.GetValue()
			case m.Histogram != nil:
				// name_count, name_sum and name_bucket{le="…"}, as the
				// text format has them (no other labels: the pool's
				// histogram is tested without ConstLabels).
				h := m.Histogram
				out[mf.GetName()+"_count"] = float64(h.GetSampleCount())
				out[mf.GetName()+"_sum"] = h.GetSampleSum()
				for _, b := range h.GetBucket() {
					out[fmt.Sprintf("%s_bucket{le=%q}", mf.GetName(), fmt.Sprint(b.GetUpperBound()))] = float64(b.GetCumulativeCount())
				}
			default:
				t.Fatalf("%s: neither a counter nor a gauge", key)
			}
		}
	}
	return out
}

// lint fails t for every problem Prometheus' linter finds in c's metrics.
func lint(t *testing.T, c prometheus.Collector) {
	t.Helper()
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}
