// Package dbotel traces a dbscope service and reports its pool with
// OpenTelemetry. It is a module of its own
// (github.com/dbscope/dbscope/dbotel), so that programs that do not use
// OpenTelemetry do not depend on it; it uses the OpenTelemetry API only,
// and the program sets up the SDK and its exporters.
//
// A trace shows each unit of work as one span with the statements it ran
// under it: an HTTP request's own span (otelhttp's, or whatever span the
// request's context carries), a websocket callback's, a [dbctx.Do]'s
// where its context has none. The wait for a worker slot and the pinning
// of a connection are events of that span, not spans of their own, and
// what dbscope sends before a statement in its round trip (a reset owed,
// Atomic's BEGIN, the settings of dbctx.NewSetting) are attributes of the
// statement's span.
//
//	o := &dbotel.Options{PoolName: "primary"} // nil: the global providers
//
//	cfg, err := pgx.ParseConfig(dsn)
//	…
//	cfg.Tracer = dbotel.NewTracer(o) // a span per statement
//	db := stdlib.OpenDB(*cfg)
//	pool := dbctx.New(db, dbotel.PoolOptions(&dbctx.Options{MaxWorkers: 16}, o))
//	reg, err := dbotel.RegisterMetrics(pool, o) // db.client.connection.*, dbscope.pool.*
//	…
//	defer reg.Unregister()
//
//	ws := wsconsumer.NewSync(pool, consumer, dbotel.ConsumerOptions(&wsconsumer.Options{…}, o))
//	mux.Handle("GET /ws", ws)
//	mux.Handle("GET /items/{id}", items)
//	// otelhttp outside middleware.DB: the request's span is in the
//	// context before the scope takes its slot.
//	handler := otelhttp.NewHandler(middleware.DB(pool)(mux), "http")
//
// The metrics follow OpenTelemetry's semantic conventions for database
// client connection pools, with dbscope's own counters beside them
// (resets, retries, settings applied, discards by reason: see
// [RegisterMetrics]); package dbprom reports the same figures to
// Prometheus.
package dbotel
