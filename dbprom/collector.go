package dbprom

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// A family is one metric name of a collector over a snapshot of type S:
// collect emits its series from the snapshot, none, one, or one per value
// of label.
type family[S any] struct {
	name, help string
	typ        prometheus.ValueType
	label      string // the variable label, or ""
	collect    func(s *S, emit func(v float64, labelValue ...string))

	// hist, set for a histogram in place of collect, returns its count,
	// sum and cumulative buckets.
	hist func(s *S) (count uint64, sum float64, buckets map[float64]uint64)
}

func counter[S any](name, help string, v func(*S) int64) family[S] {
	return family[S]{name: name, help: help, typ: prometheus.CounterValue,
		collect: func(s *S, emit func(float64, ...string)) { emit(float64(v(s))) }}
}

func gauge[S any](name, help string, v func(*S) int) family[S] {
	return family[S]{name: name, help: help, typ: prometheus.GaugeValue,
		collect: func(s *S, emit func(float64, ...string)) { emit(float64(v(s))) }}
}

// collector takes one snapshot per scrape, with the function it was made
// with, and turns it into constant metrics: nothing runs between scrapes
// and nothing is added to the work it watches.
type collector[S any] struct {
	snapshot func() S
	families []family[S]
	descs    []*prometheus.Desc // descs[i] describes families[i]
}

// newCollector panics, naming constructor, on what would otherwise fail
// at registration: a namespace or label that Prometheus refuses.
func newCollector[S any](constructor string, snapshot func() S, subsystem string, opts *Options, families []family[S]) *collector[S] {
	o := opts.withDefaults()
	c := &collector[S]{snapshot: snapshot, families: families}
	for _, f := range families {
		var labels []string
		if f.label != "" {
			labels = []string{f.label}
		}
		d := prometheus.NewDesc(prometheus.BuildFQName(o.Namespace, subsystem, f.name), f.help, labels, o.ConstLabels)
		if err := d.Err(); err != nil {
			panic(fmt.Sprintf("dbprom: %s: %v", constructor, err))
		}
		c.descs = append(c.descs, d)
	}
	return c
}

// Describe implements [prometheus.Collector].
func (c *collector[S]) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements [prometheus.Collector]: one snapshot, every metric
// from it.
func (c *collector[S]) Collect(ch chan<- prometheus.Metric) {
	s := c.snapshot()
	for i, f := range c.families {
		d := c.descs[i]
		if f.hist != nil {
			n, sum, b := f.hist(&s)
			ch <- prometheus.MustNewConstHistogram(d, n, sum, b)
			continue
		}
		f.collect(&s, func(v float64, labelValue ...string) {
			ch <- prometheus.MustNewConstMetric(d, f.typ, v, labelValue...)
		})
	}
}
