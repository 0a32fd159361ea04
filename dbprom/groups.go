package dbprom

import (
	"github.com/dbscope/dbscope/groups"
	"github.com/prometheus/client_golang/prometheus"
)

// NewGroupsCollector returns a collector of l's [groups.Stats], read once
// per scrape: register it on a [prometheus.Registerer]. Its metrics are
// named namespace_groups_… ([Options.Namespace], default dbscope), carry
// [Options.ConstLabels] and are listed in the package doc. It panics if
// l is nil or opts holds a namespace or label Prometheus refuses.
func NewGroupsCollector(l *groups.Layer, opts *Options) prometheus.Collector {
	if l == nil {
		panic("dbprom: NewGroupsCollector expects a non-nil *groups.Layer")
	}
	return newCollector("NewGroupsCollector", l.Stats, "groups", opts, groupsFamilies)
}

type layerStats = groups.Stats

var groupsFamilies = []family[layerStats]{
	gauge("groups", "Groups with members in this process now.",
		func(s *layerStats) int { return s.Groups }),
	gauge("members", "Members now, each counted once whatever its groups.",
		func(s *layerStats) int { return s.Members }),
	counter("sent_total", "Messages sent; one inside a transaction is counted at its commit, not if it rolls back.",
		func(s *layerStats) int64 { return s.Sent }),
	counter("delivered_total", "Events members handled.",
		func(s *layerStats) int64 { return s.Delivered }),
	counter("slow_total", "Members that fell behind their queue, told and dropped.",
		func(s *layerStats) int64 { return s.Slow }),
	counter("gaps_total", "Gap events queued to members: the engine may have lost messages.",
		func(s *layerStats) int64 { return s.Gaps }),
	counter("reconnects_total", "Reconnections of the engine.",
		func(s *layerStats) int64 { return s.Reconnects }),
}

// NewPostgresCollector returns a collector of the PostgreSQL engine's own
// figures ([groups.PostgresStats]), read once per scrape, beside
// [NewGroupsCollector]'s: the notification queue's usage and the messages
// carried through the engine's table. Its metrics are named
// namespace_groups_… and listed in the package doc. It panics if e is
// nil or opts holds a namespace or label Prometheus refuses.
func NewPostgresCollector(e *groups.Postgres, opts *Options) prometheus.Collector {
	if e == nil {
		panic("dbprom: NewPostgresCollector expects a non-nil *groups.Postgres")
	}
	return newCollector("NewPostgresCollector", e.Stats, "groups", opts, postgresFamilies)
}

type postgresStats = groups.PostgresStats

var postgresFamilies = []family[postgresStats]{
	{
		name: "large_messages_total",
		help: "Messages past NOTIFY's limit, through the PostgreSQL engine's table: sent (rows this " +
			"instance wrote), received (bodies its listener read, once per message), missing (references " +
			"whose row was gone, or that the instance has no table for: a gap for the group).",
		typ:   prometheus.CounterValue,
		label: "event",
		collect: func(s *postgresStats, emit func(float64, ...string)) {
			emit(float64(s.LargeSent), "sent")
			emit(float64(s.LargeReceived), "received")
			emit(float64(s.LargeMissing), "missing")
		},
	},
	{
		name:  "large_bytes_total",
		help:  "Bytes of the messages past NOTIFY's limit (envelopes), sent and received as large_messages_total counts them.",
		typ:   prometheus.CounterValue,
		label: "event",
		collect: func(s *postgresStats, emit func(float64, ...string)) {
			emit(float64(s.LargeSentBytes), "sent")
			emit(float64(s.LargeReceivedBytes), "received")
		},
	},
	{
		name: "notification_queue_usage_ratio",
		help: "PostgreSQL's pg_notification_queue_usage() as last sampled, 0 to 1: at 1, commits " +
			"that NOTIFY fail. Absent before the first sample.",
		typ: prometheus.GaugeValue,
		collect: func(s *postgresStats, emit func(float64, ...string)) {
			if s.QueueUsage >= 0 {
				emit(s.QueueUsage)
			}
		},
	},
}
