package dbprom_test

import (
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/prometheus/client_golang/prometheus"
)

// The package doc lists every metric the collectors export, with every
// value of its label, and nothing they do not export: it is what users
// write their dashboards and alerts from.
func TestDocListsEveryMetric(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	// "//	dbscope_x{label="a|b"}  …": a metric, and its label's values.
	line := regexp.MustCompile(`(?m)^//\t(dbscope_[a-z_]+)(?:\{([a-z]+)="([a-z_|]+)"\})?`)
	documented := map[string]bool{}
	for _, m := range line.FindAllStringSubmatch(string(src), -1) {
		if m[2] == "" {
			documented[m[1]] = true
			continue
		}
		for _, v := range strings.Split(m[3], "|") {
			documented[m[1]+"{"+m[2]+"="+v+"}"] = true
		}
	}
	if len(documented) == 0 {
		t.Fatal("no metric found in doc.go")
	}

	env := pgtest.New(t)
	p := dbctx.New(env.Open(t), nil)
	t.Cleanup(func() { p.Close() }) // after the layer's
	e := groups.NewPostgres(p, &groups.PostgresOptions{
		ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), SampleEvery: 50 * time.Millisecond,
	})
	l := newLayer(t, e)
	dbtest.Eventually(t, "the queue usage to be sampled", func() bool { return e.Stats().QueueUsage >= 0 })
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{}, nil)
	t.Cleanup(func() { h.Shutdown(t.Context()) })
	var _ http.Handler = h

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(dbprom.NewCollector(p, nil), dbprom.NewGroupsCollector(l, nil),
		dbprom.NewPostgresCollector(e, nil), dbprom.NewConsumerCollector(h, nil))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	exported := map[string]bool{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, lp := range m.GetLabel() {
				key += "{" + lp.GetName() + "=" + lp.GetValue() + "}"
			}
			exported[key] = true
		}
	}
	for k := range exported {
		if !documented[k] {
			t.Errorf("exported, not in the package doc: %s", k)
		}
	}
	for k := range documented {
		if !exported[k] {
			t.Errorf("in the package doc, not exported: %s", k)
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
		t.Logf("documented: %v\nexported: %v", keys(documented), keys(exported))
	}
}
