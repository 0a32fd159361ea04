package dbotel

import (
	"context"
	"errors"

	"github.com/dbscope/dbscope/dbctx"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/dbconv"
	"go.opentelemetry.io/otel/trace"
)

// The events a pool records on the span of the unit of work, and their
// attributes.
const (
	// EventWait is a caller's wait for a worker slot (dbctx.Wait): its
	// time in seconds, whether it queued, and how it ended (granted,
	// busy, closed, canceled).
	EventWait = "dbscope.slot.wait"

	// EventPin is a connection pinned (dbctx.Pin): the time it took in
	// seconds, whether it was kept by the pool since a moment before or
	// new, whether its socket was checked, how many dead connections
	// were discarded on the way, and how it ended (pinned, or failed).
	EventPin = "dbscope.pin"

	// SpanDo is the name of the span of a dbctx.Do that finds no span in
	// its context.
	SpanDo = "dbctx.Do"
)

// PoolOptions returns a copy of opts (nil: defaults) with hooks that
// trace the pool's units of work and record its waits:
//
//   - a caller's wait for a worker slot ([dbctx.Options.OnWait]) and each
//     connection pinned ([dbctx.Options.OnPin]) are events of the span in
//     the caller's context ([EventWait], [EventPin]): a request's span
//     (otelhttp's), a websocket callback's ([ConsumerOptions]), the
//     caller's own; never spans of their own;
//   - a [dbctx.Do] that runs on a scope of its own and finds no span in
//     its context ([dbctx.Options.OnDo]), such as a background job's,
//     gets a span ([SpanDo]), which its statements' spans nest under;
//   - each wait of a caller that queued is recorded in
//     db.client.connection.wait_time (see [RegisterMetrics]).
//
// Hooks opts already has run first.
func PoolOptions(opts *dbctx.Options, o *Options) *dbctx.Options {
	var c dbctx.Options
	if opts != nil {
		c = *opts
	}
	oo := o.withDefaults()
	tracer := oo.tracer()
	waitTime, err := dbconv.NewClientConnectionWaitTime(oo.meter(),
		metric.WithExplicitBucketBoundaries(waitBounds()...))
	if err != nil {
		otel.Handle(err)
	}
	pool := attribute.NewSet(semconv.DBClientConnectionPoolName(oo.PoolName))

	// What dbotel records is recorded even where the hook opts had
	// panics (dbctx logs that and goes on): the histogram would miss the
	// wait.
	onWait := c.OnWait
	c.OnWait = func(ctx context.Context, w dbctx.Wait) {
		defer recordWait(ctx, w, waitTime, pool)
		if onWait != nil {
			onWait(ctx, w)
		}
	}
	onPin := c.OnPin
	c.OnPin = func(ctx context.Context, p dbctx.Pin) {
		defer recordPin(ctx, p)
		if onPin != nil {
			onPin(ctx, p)
		}
	}

	onDo := c.OnDo
	c.OnDo = func(ctx context.Context) (context.Context, func(error)) {
		var before func(error)
		if onDo != nil {
			ctx, before = onDo(ctx)
		}
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() && !sc.IsRemote() {
			// The work is part of the span it runs in.
			return ctx, before
		}
		_, span := tracer.Start(ctx, SpanDo, trace.WithSpanKind(trace.SpanKindInternal))
		return withSpan(ctx, span), ending(span, before)
	}
	return &c
}

// recordWait records w in the wait_time histogram, where the caller
// queued, and as an event of the span in ctx.
func recordWait(ctx context.Context, w dbctx.Wait, waitTime dbconv.ClientConnectionWaitTime, pool attribute.Set) {
	if w.Queued {
		waitTime.RecordSet(ctx, w.Waited.Seconds(), pool)
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	span.AddEvent(EventWait, trace.WithAttributes(
		attribute.Float64("dbscope.slot.wait.seconds", w.Waited.Seconds()),
		attribute.Bool("dbscope.slot.wait.queued", w.Queued),
		attribute.String("dbscope.slot.wait.outcome", waitOutcome(w.Err)),
	))
}

// recordPin records p as an event of the span in ctx.
func recordPin(ctx context.Context, p dbctx.Pin) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	outcome := "pinned"
	if p.Err != nil {
		outcome = "failed"
	}
	span.AddEvent(EventPin, trace.WithAttributes(
		attribute.Float64("dbscope.pin.seconds", p.Took.Seconds()),
		attribute.Bool("dbscope.pin.kept", p.Kept),
		attribute.Bool("dbscope.pin.new", p.New),
		attribute.Bool("dbscope.pin.checked", p.Checked),
		attribute.Int("dbscope.pin.dead", p.Dead),
		attribute.String("dbscope.pin.outcome", outcome),
	))
}

// waitOutcome names how a wait ended.
func waitOutcome(err error) string {
	switch {
	case err == nil:
		return "granted"
	case errors.Is(err, dbctx.ErrBusy):
		return "busy"
	case errors.Is(err, dbctx.ErrPoolClosed):
		return "closed"
	}
	return "canceled"
}

// waitBounds are the bucket bounds of wait_time, in seconds: those of
// dbctx.WaitBuckets, which dbprom's histogram has too.
func waitBounds() []float64 {
	var b []float64
	for _, d := range dbctx.WaitBuckets() {
		b = append(b, d.Seconds())
	}
	return b
}

// ending returns the done function of a hook that started span, after
// the done function of the hook it wraps, if any: the span ends even
// where that one panics (dbctx and wsconsumer recover such a panic, and
// the span would be left open).
func ending(span trace.Span, before func(error)) func(error) {
	return func(err error) {
		defer end(span, err)
		if before != nil {
			before(err)
		}
	}
}

// end ends span with err as its outcome.
func end(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
