package dbprom

import (
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/prometheus/client_golang/prometheus"
)

// NewConsumerCollector returns a collector of h's [wsconsumer.Stats], read
// once per scrape: the sockets open now, the upgrades answered and the
// callbacks that failed, by cause. Its metrics are named
// namespace_websocket_… ([Options.Namespace], default dbscope), carry
// [Options.ConstLabels] (one per endpoint: endpoint="chat") and are listed
// in the package doc. It panics if h is nil or opts holds a namespace or
// label Prometheus refuses.
func NewConsumerCollector(h *wsconsumer.Handler, opts *Options) prometheus.Collector {
	if h == nil {
		panic("dbprom: NewConsumerCollector expects a non-nil *wsconsumer.Handler")
	}
	return newCollector("NewConsumerCollector", h.Stats, "websocket", opts, consumerFamilies)
}

type consumerStats = wsconsumer.Stats

var consumerFamilies = []family[consumerStats]{
	gauge("sockets", "Sockets counted against Options.MaxSockets now: from the verified upgrade to the end of Disconnect.",
		func(s *consumerStats) int { return s.Sockets }),
	{
		name: "upgrades_total",
		help: "Upgrade requests by result: accepted; bad_upgrade (not a websocket upgrade Accept takes, " +
			"no callback run); refused (503 before any callback: MaxSockets reached or shutting down); " +
			"rejected (by Connect, with wsconsumer.Reject).",
		typ:   prometheus.CounterValue,
		label: "result",
		collect: func(s *consumerStats, emit func(float64, ...string)) {
			emit(float64(s.Accepted), "accepted")
			emit(float64(s.BadUpgrade), "bad_upgrade")
			emit(float64(s.Refused), "refused")
			emit(float64(s.Rejected), "rejected")
		},
	},
	{
		name: "callback_errors_total",
		help: "Callbacks that failed, by cause: busy (the pool busy, the database unavailable or the pool " +
			"closed, or the handler shutting down: 503, close 1013 or 1001); failed (their own error, a panic, " +
			"a misconfigured database: 500, close 1011, logged at ERROR); client_gone (the client hung up: not " +
			"the server's failure).",
		typ:   prometheus.CounterValue,
		label: "cause",
		collect: func(s *consumerStats, emit func(float64, ...string)) {
			emit(float64(s.Busy), "busy")
			emit(float64(s.Failed), "failed")
			emit(float64(s.ClientGone), "client_gone")
		},
	},
}
