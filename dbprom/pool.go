package dbprom

import (
	"github.com/dbscope/dbscope/dbctx"
	"github.com/prometheus/client_golang/prometheus"
)

// NewCollector returns a collector of p's [dbctx.Stats], read once per
// scrape: register it on a [prometheus.Registerer]. Its metrics, named
// with [Options.Namespace] (default dbscope) and carrying
// [Options.ConstLabels], are listed in the package doc. It panics if p
// is nil or opts holds a namespace or label Prometheus refuses.
func NewCollector(p *dbctx.Pool, opts *Options) prometheus.Collector {
	if p == nil {
		panic("dbprom: NewCollector expects a non-nil *dbctx.Pool")
	}
	return newCollector("NewCollector", p.Stats, "", opts, poolFamilies)
}

type stats = dbctx.Stats

var poolFamilies = []family[stats]{
	gauge("slots", "Worker slots of the pool in all (dbctx.Options.MaxWorkers).",
		func(s *stats) int { return s.MaxWorkers }),
	gauge("slots_in_use", "Worker slots held now.",
		func(s *stats) int { return s.InUse }),
	gauge("waiting", "Callers queued for a worker slot now.",
		func(s *stats) int { return s.Waiting }),
	gauge("pinned_connections", "Connections pinned by scopes now.",
		func(s *stats) int { return s.Pinned }),
	gauge("kept_connections", "Clean connections kept for the next scope now (each for at most 10ms).",
		func(s *stats) int { return s.Kept }),

	counter("waits_total", "Callers that had to queue for a worker slot.",
		func(s *stats) int64 { return s.WaitCount }),
	{
		name: "wait_seconds",
		help: "Time callers that queued for a worker slot waited, as a histogram (buckets: dbctx.WaitBuckets()).",
		hist: func(s *stats) (uint64, float64, map[float64]uint64) {
			bounds := dbctx.WaitBuckets()
			b := make(map[float64]uint64, len(bounds))
			for i, le := range bounds {
				b[le.Seconds()] = uint64(s.WaitsWithin[i])
			}
			return uint64(s.WaitCount), s.WaitDuration.Seconds(), b
		},
	},
	counter("busy_total", "Callers refused with dbctx.ErrBusy: the wait queue was full or the wait timed out.",
		func(s *stats) int64 { return s.Busy }),
	{
		name: "connect_errors_total",
		help: "Connects that failed, by kind: misconfigured (dbctx.ErrMisconfigured: a database or role " +
			"that does not exist, a wrong password, an unknown host, TLS or authentication refused; an operator " +
			"must act) or unavailable (dbctx.ErrUnavailable: the database down, starting up or full, the network failing).",
		typ:   prometheus.CounterValue,
		label: "kind",
		collect: func(s *stats, emit func(float64, ...string)) {
			emit(float64(s.Misconfigured), "misconfigured")
			emit(float64(s.Unavailable), "unavailable")
		},
	},
	counter("acquired_total", "Connections pinned by scopes.",
		func(s *stats) int64 { return s.Acquired }),
	counter("given_back_total", "Connections given back clean, to the *sql.DB or kept for the next scope.",
		func(s *stats) int64 { return s.GivenBack }),
	counter("retries_total", "Statements run again on a fresh connection.",
		func(s *stats) int64 { return s.Retries }),
	counter("resets_total", "Session resets run, owed by a dirty scope: in the round trip of the connection's next use, or before it went back to the *sql.DB.",
		func(s *stats) int64 { return s.Resets }),
	counter("sequence_resets_total", "Of the resets, those that were DISCARD SEQUENCES alone: "+
		"the scope's writes left only sequence state, their tables running no code of their own.",
		func(s *stats) int64 { return s.SequenceResets }),
	counter("outcomes_unknown_total", "COMMITs, and statements outside a transaction, whose connection failed after they were sent "+
		"and before their answer (dbctx.ErrCommitUnknown): work PostgreSQL may have committed.",
		func(s *stats) int64 { return s.OutcomesUnknown }),
	counter("settings_applied_total", "Round trips that carried set_config for the settings units of work declare (dbctx.Setting), "+
		"their connection not carrying exactly the unit's; under TransactionPooling, every statement's.",
		func(s *stats) int64 { return s.Settings }),
	counter("rolled_back_total", "Transactions left open that a boundary rolled back.",
		func(s *stats) int64 { return s.RolledBack }),
	counter("leaks_total", "Scopes reported by the leak detector (dbctx.Options.LeakTimeout).",
		func(s *stats) int64 { return s.Leaks }),
	{
		name: "discarded_total",
		help: "Connections discarded (closed, never reused), by reason: dead before use, broken " +
			"(a connection-level error), canceled mid-query, tx (a transaction that could not be " +
			"rolled back), panic in user code, hook (OnAcquire or OnRelease failed), reset " +
			"(the session reset failed), raw (handed to user code as itself), unresettable (state no reset undoes).",
		typ:   prometheus.CounterValue,
		label: "reason",
		collect: func(s *stats, emit func(float64, ...string)) {
			for reason, n := range s.Discarded.All() {
				emit(float64(n), reason)
			}
		},
	},
}
