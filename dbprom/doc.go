// Package dbprom exports the counters of a [dbctx.Pool], of a
// [groups.Layer] and of its PostgreSQL engine, and of a
// [wsconsumer.Handler], as Prometheus metrics. It is a module of its own
// (github.com/dbscope/dbscope/dbprom), so that programs that do not
// use Prometheus do not depend on its client library; without it, the
// standard library's expvar publishes the same numbers from
// [dbctx.Pool.Stats] and [groups.Layer.Stats]:
//
//	expvar.Publish("dbscope", expvar.Func(func() any { return pool.Stats() }))
//
// A collector reads Stats() once per scrape: no goroutine runs between
// scrapes and nothing is added to the work of a query. Register the
// collectors on a registry and serve it:
//
//	reg := prometheus.NewRegistry()
//	reg.MustRegister(
//		dbprom.NewCollector(pool, nil),
//		dbprom.NewGroupsCollector(layer, nil),
//		dbprom.NewPostgresCollector(engine, nil), // the layer's engine, over PostgreSQL
//		dbprom.NewConsumerCollector(chat, nil),   // a websocket endpoint
//		collectors.NewDBStatsCollector(pool.DB(), "app"), // database/sql's own counters
//	)
//	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Several pools on one registry each need [Options.ConstLabels] of their
// own (pool="primary", pool="replica"), as several websocket endpoints do
// (endpoint="chat").
//
// # The pool's metrics
//
// Gauges, the values now:
//
//	dbscope_slots                worker slots in all (Options.MaxWorkers)
//	dbscope_slots_in_use         worker slots held
//	dbscope_waiting              callers queued for a slot
//	dbscope_pinned_connections   connections pinned by scopes
//	dbscope_kept_connections     clean connections kept for the next scope
//
// Counters, since the pool was made:
//
//	dbscope_waits_total          callers that queued for a slot
//	dbscope_busy_total           callers refused with ErrBusy
//	dbscope_connect_errors_total{kind="misconfigured|unavailable"}
//	                             connects that failed: ErrMisconfigured (alert on any), ErrUnavailable
//	dbscope_acquired_total       connections pinned by scopes
//	dbscope_given_back_total     connections given back clean
//	dbscope_retries_total        statements run again on a fresh connection
//	dbscope_resets_total         session resets
//	dbscope_sequence_resets_total  of them, DISCARD SEQUENCES alone (writes that left only sequence state)
//	dbscope_settings_applied_total  round trips that carried set_config for declared settings
//	dbscope_rolled_back_total    transactions left open, rolled back at a boundary
//	dbscope_outcomes_unknown_total  COMMITs and statements whose answer was lost after they were sent (ErrCommitUnknown)
//	dbscope_leaks_total          scopes reported by the leak detector
//	dbscope_discarded_total{reason="dead|broken|canceled|tx|panic|hook|reset|raw|unresettable"}
//
// Every reason of dbscope_discarded_total and every kind of
// dbscope_connect_errors_total is exported from the start, at 0, so that
// rate() and increase() see the first one.
//
// # The layer's metrics
//
//	dbscope_groups_groups                     gauge: groups with members in this process
//	dbscope_groups_members                    gauge: members
//	dbscope_groups_sent_total                 messages sent (in a transaction: at its commit)
//	dbscope_groups_delivered_total            events members handled
//	dbscope_groups_slow_total                 members dropped for falling behind
//	dbscope_groups_gaps_total                 gap events queued to members
//	dbscope_groups_reconnects_total           reconnections of the engine
//
// # The PostgreSQL engine's metrics
//
//	dbscope_groups_notification_queue_usage_ratio  gauge: pg_notification_queue_usage(), 0 to 1
//	dbscope_groups_large_messages_total{event="sent|received|missing"}
//	                                          messages past NOTIFY's limit, through the table
//	dbscope_groups_large_bytes_total{event="sent|received"}
//	                                          their bytes, envelopes included
//
// The queue usage is exported once it has been sampled.
//
// # A websocket endpoint's metrics
//
//	dbscope_websocket_sockets                 gauge: sockets counted against MaxSockets
//	dbscope_websocket_upgrades_total{result="accepted|bad_upgrade|refused|rejected"}
//	                                          upgrade requests as answered
//	dbscope_websocket_callback_errors_total{cause="busy|failed|client_gone"}
//	                                          callbacks that failed: busy (503, 1013, 1001),
//	                                          failed (500, 1011: alert on a rate), client_gone
//
// Every result and cause is exported from the start, at 0.
//
// A histogram, of the waits of the callers that queued:
//
//	dbscope_wait_seconds{le=…}   buckets dbctx.WaitBuckets(): 1ms, 5ms, 25ms, 100ms, 500ms, 2.5s
//
// histogram_quantile(0.99, rate(dbscope_wait_seconds_bucket[5m])) is the
// 99th percentile of the wait for a slot. The pool counts each wait in
// its bucket with one atomic add, on the waiting path only.
package dbprom
