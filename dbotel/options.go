package dbotel

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// Options configures what the package's functions make. A nil *Options
// means all defaults. Pass the same Options to every function for one
// pool.
type Options struct {
	// TracerProvider makes the tracer of the spans. Default: the global
	// one, otel.GetTracerProvider().
	TracerProvider trace.TracerProvider

	// MeterProvider makes the meter of the metrics. Default: the global
	// one, otel.GetMeterProvider().
	MeterProvider metric.MeterProvider

	// PoolName is the db.client.connection.pool.name of the pool's
	// metrics: two pools reported through one MeterProvider need names
	// of their own (primary, replica). Default: "dbscope".
	PoolName string

	// NoQueryText leaves db.query.text out of the statements' spans,
	// where statements carry literal values that must not leave the
	// process, and the messages of their errors, which can quote a value
	// PostgreSQL or pgx could not read, a parameter's too (parameters are
	// not recorded otherwise). The span of a unit of work records its own
	// error (what Do's function or a callback returned) as it is. Default:
	// false.
	NoQueryText bool
}

// DefaultPoolName is the default [Options.PoolName].
const DefaultPoolName = "dbscope"

// scope is the instrumentation scope of the tracer and the meter.
const scope = "github.com/dbscope/dbscope/dbotel"

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.TracerProvider == nil {
		c.TracerProvider = otel.GetTracerProvider()
	}
	if c.MeterProvider == nil {
		c.MeterProvider = otel.GetMeterProvider()
	}
	if c.PoolName == "" {
		c.PoolName = DefaultPoolName
	}
	return c
}

func (o *Options) tracer() trace.Tracer {
	return o.TracerProvider.Tracer(scope, trace.WithSchemaURL(semconv.SchemaURL))
}

func (o *Options) meter() metric.Meter {
	return o.MeterProvider.Meter(scope, metric.WithSchemaURL(semconv.SchemaURL))
}
