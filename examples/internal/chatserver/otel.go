package chatserver

import (
	"context"
	"database/sql"
	"errors"
	"io"
	"net/http"
	"os"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// telemetry is the OpenTelemetry SDK of -otel, and dbscope's wiring of it
// (package dbotel). A nil *telemetry is -otel off: its methods return
// what they are given, as the server has it without telemetry.
type telemetry struct {
	tp *sdktrace.TracerProvider
	mp *sdkmetric.MeterProvider
	o  *dbotel.Options
}

// newTelemetry exports traces and metrics over OTLP/HTTP where
// $OTEL_EXPORTER_OTLP_ENDPOINT (or its _TRACES_ and _METRICS_ variants)
// names a collector, else writes them to w (nil: stdout) as JSON; the
// SDK's other variables apply ($OTEL_SERVICE_NAME,
// $OTEL_METRIC_EXPORT_INTERVAL…).
func newTelemetry(ctx context.Context, w io.Writer) (*telemetry, error) {
	if w == nil {
		w = os.Stdout
	}
	res, err := resource.Merge(resource.Default(),
		resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName("dbscope-chat")))
	if err != nil {
		return nil, err
	}
	var spans sdktrace.SpanExporter
	var metrics sdkmetric.Exporter
	if otlp("TRACES") {
		spans, err = otlptracehttp.New(ctx)
	} else {
		spans, err = stdouttrace.New(stdouttrace.WithWriter(w))
	}
	if err != nil {
		return nil, err
	}
	if otlp("METRICS") {
		metrics, err = otlpmetrichttp.New(ctx)
	} else {
		metrics, err = stdoutmetric.New(stdoutmetric.WithWriter(w))
	}
	if err != nil {
		return nil, err
	}
	t := &telemetry{
		tp: sdktrace.NewTracerProvider(sdktrace.WithBatcher(spans), sdktrace.WithResource(res)),
		mp: sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(metrics)), sdkmetric.WithResource(res)),
	}
	t.o = &dbotel.Options{TracerProvider: t.tp, MeterProvider: t.mp}
	return t, nil
}

// otlp reports whether the environment names an OTLP endpoint for signal
// (TRACES, METRICS).
func otlp(signal string) bool {
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_"+signal+"_ENDPOINT") != ""
}

// shutdown exports what is pending and stops the exporters.
func (t *telemetry) shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return errors.Join(t.tp.Shutdown(ctx), t.mp.Shutdown(ctx))
}

// openDB opens the database, its statements traced: pgx's tracer goes on
// the pgx config, from which the *sql.DB connects.
func (t *telemetry) openDB(dsn string) (*sql.DB, error) {
	if t == nil {
		return sql.Open("pgx", dsn)
	}
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	cfg.Tracer = dbotel.NewTracer(t.o)
	return stdlib.OpenDB(*cfg), nil
}

// pool makes the pool with dbotel's hooks, and reports its metrics.
func (t *telemetry) pool(db *sql.DB, opts *dbctx.Options) (*dbctx.Pool, error) {
	if t == nil {
		return dbctx.New(db, opts), nil
	}
	pool := dbctx.New(db, dbotel.PoolOptions(opts, t.o))
	// Unregistered with the meter provider's shutdown.
	if _, err := dbotel.RegisterMetrics(pool, t.o); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// consumerOptions gives each callback of a socket a span.
func (t *telemetry) consumerOptions(opts *wsconsumer.Options) *wsconsumer.Options {
	if t == nil {
		return opts
	}
	return dbotel.ConsumerOptions(opts, t.o)
}

// handler gives each request a span, outside middleware.DB (which routes
// puts around the routes), so that the request's scope and statements
// are traced under it.
func (t *telemetry) handler(h http.Handler) http.Handler {
	if t == nil {
		return h
	}
	return otelhttp.NewHandler(h, "chat", otelhttp.WithTracerProvider(t.tp), otelhttp.WithMeterProvider(t.mp),
		otelhttp.WithPropagators(propagation.TraceContext{}))
}
