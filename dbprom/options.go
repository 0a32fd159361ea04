package dbprom

import "github.com/prometheus/client_golang/prometheus"

// Options configures a collector made by [NewCollector],
// [NewGroupsCollector], [NewPostgresCollector] or [NewConsumerCollector].
// A nil *Options means all defaults.
type Options struct {
	// Namespace is the first part of every metric's name, as in
	// dbscope_slots_in_use. Default: "dbscope".
	Namespace string

	// ConstLabels are added to every metric of the collector. Two
	// collectors of the same kind on one registry need different ones
	// (pool="primary" and pool="replica"), or the second fails to
	// register. Default: none.
	ConstLabels prometheus.Labels
}

// DefaultNamespace is the default [Options.Namespace].
const DefaultNamespace = "dbscope"

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.Namespace == "" {
		c.Namespace = DefaultNamespace
	}
	return c
}
