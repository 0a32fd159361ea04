package chattest

import (
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// Metrics scrapes GET /metrics as Prometheus does and reads it with
// Prometheus' own decoder and linter: every metric of the pool, the
// layer and the websocket endpoints is there with its type, their values agree with /debug/dbstats
// after a message was posted, database/sql's and the Go runtime's
// metrics are there too, and the linter finds no problem.
func Metrics(t *testing.T, s *Server) {
	s.post(t, chat.Post{Room: "metrics", Body: "counted"})
	st := s.Stats(t)

	resp, body := s.do(t, "GET", "/metrics", "")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: %s %.200q", resp.Status, body)
	}
	format := expfmt.ResponseFormat(resp.Header)
	if format.FormatType() == expfmt.TypeUnknown {
		t.Fatalf("GET /metrics: Content-Type %q is no Prometheus format", resp.Header.Get("Content-Type"))
	}
	dec := expfmt.NewDecoder(strings.NewReader(body), format)
	families := make(map[string]*dto.MetricFamily)
	var all []*dto.MetricFamily
	for {
		mf := &dto.MetricFamily{}
		err := dec.Decode(mf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("GET /metrics: decoding: %v", err)
		}
		families[mf.GetName()] = mf
		all = append(all, mf)
	}

	problems, err := promlint.NewWithMetricFamilies(all).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// OpenMetrics names a family without a counter's _total: two
	// families of one name (a counter x_total beside a histogram x) are
	// refused by its parsers. (client_golang's own Go collector has one
	// such pair, go_memstats_alloc_bytes: ours are looked at.)
	seen := make(map[string]string)
	for _, mf := range all {
		name := mf.GetName()
		if !strings.HasPrefix(name, "dbscope_") {
			continue
		}
		if mf.GetType() == dto.MetricType_COUNTER {
			name = strings.TrimSuffix(name, "_total")
		}
		if other, dup := seen[name]; dup {
			t.Errorf("metric families %s and %s are one family in OpenMetrics", other, mf.GetName())
		}
		seen[name] = mf.GetName()
	}

	gauge, counter := dto.MetricType_GAUGE, dto.MetricType_COUNTER
	for name, typ := range map[string]dto.MetricType{
		"dbscope_slots":                           gauge,
		"dbscope_slots_in_use":                    gauge,
		"dbscope_waiting":                         gauge,
		"dbscope_pinned_connections":              gauge,
		"dbscope_kept_connections":                gauge,
		"dbscope_waits_total":                     counter,
		"dbscope_busy_total":                      counter,
		"dbscope_acquired_total":                  counter,
		"dbscope_given_back_total":                counter,
		"dbscope_retries_total":                   counter,
		"dbscope_resets_total":                    counter,
		"dbscope_sequence_resets_total":           counter,
		"dbscope_settings_applied_total":          counter,
		"dbscope_rolled_back_total":               counter,
		"dbscope_outcomes_unknown_total":          counter,
		"dbscope_leaks_total":                     counter,
		"dbscope_discarded_total":                 counter,
		"dbscope_groups_groups":                   gauge,
		"dbscope_groups_members":                  gauge,
		"dbscope_groups_sent_total":               counter,
		"dbscope_groups_delivered_total":          counter,
		"dbscope_groups_slow_total":               counter,
		"dbscope_groups_gaps_total":               counter,
		"dbscope_groups_reconnects_total":         counter,
		"dbscope_websocket_sockets":               gauge,
		"dbscope_websocket_upgrades_total":        counter,
		"dbscope_websocket_callback_errors_total": counter,
		"go_sql_open_connections":                 gauge,
		"go_goroutines":                           gauge,
	} {
		if mf := families[name]; mf == nil || mf.GetType() != typ {
			t.Errorf("%s: %v, want a %v", name, mf, typ)
		}
	}

	value := func(name string) float64 {
		ms := families[name].GetMetric()
		if len(ms) != 1 {
			t.Fatalf("%s: %d series, want 1", name, len(ms))
		}
		if g := ms[0].GetGauge(); g != nil {
			return g.GetValue()
		}
		return ms[0].GetCounter().GetValue()
	}
	if v := value("dbscope_slots"); v != float64(st.MaxWorkers) {
		t.Errorf("dbscope_slots = %v, /debug/dbstats says %d", v, st.MaxWorkers)
	}
	if v := value("dbscope_acquired_total"); v == 0 || v < float64(st.Acquired) {
		t.Errorf("dbscope_acquired_total = %v after a post, /debug/dbstats said %d before", v, st.Acquired)
	}
	for _, name := range []string{"dbscope_slots_in_use", "dbscope_pinned_connections", "dbscope_waiting", "dbscope_busy_total"} {
		if v := value(name); v != 0 {
			t.Errorf("%s = %v, want 0 with no request in flight", name, v)
		}
	}
	if v := value("dbscope_groups_sent_total"); v < 1 {
		t.Errorf("dbscope_groups_sent_total = %v after a post", v)
	}
	// Both endpoints, every result and cause from the start.
	if n := len(families["dbscope_websocket_upgrades_total"].GetMetric()); n != 8 {
		t.Errorf("dbscope_websocket_upgrades_total: %d series, want 2 endpoints × 4 results", n)
	}
	if n := len(families["dbscope_websocket_callback_errors_total"].GetMetric()); n != 6 {
		t.Errorf("dbscope_websocket_callback_errors_total: %d series, want 2 endpoints × 3 causes", n)
	}
	var reasons []string
	for _, m := range families["dbscope_discarded_total"].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == "reason" {
				reasons = append(reasons, l.GetValue())
			}
		}
		if v := m.GetCounter().GetValue(); v != 0 {
			t.Errorf("dbscope_discarded_total %v = %v, want 0", m.GetLabel(), v)
		}
	}
	slices.Sort(reasons)
	if want := []string{"broken", "canceled", "dead", "hook", "panic", "raw", "reset", "tx", "unresettable"}; !slices.Equal(reasons, want) {
		t.Errorf("dbscope_discarded_total reasons %q, want %q", reasons, want)
	}
}
