package dbotel

import (
	"context"
	"strings"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/wsconsumer"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// The names of the spans of a websocket's callbacks.
const (
	SpanConnect    = "websocket connect"
	SpanReceive    = "websocket receive"
	SpanEvent      = "websocket event"
	SpanDisconnect = "websocket disconnect"
)

// ConsumerOptions returns a copy of opts (nil: defaults) whose
// [wsconsumer.Options.OnCallback] gives each callback of a socket a span,
// which the slot wait and the pin ([PoolOptions]) and the statements'
// spans ([NewTracer]) of the callback go on and under, in both styles (in
// the async style, through the dbctx.Do calls of the callback):
//
//   - Connect's span ([SpanConnect]) is a child of the span in the
//     upgrade request's context (otelhttp's, wrapping the handler);
//   - Receive's, Event's and Disconnect's ([SpanReceive], [SpanEvent],
//     [SpanDisconnect]) each start a trace of their own, linked to that
//     span: a socket lives for hours, and its messages are not part of
//     the request that opened it.
//
// The spans carry the route of the upgrade request (http.route, where
// its ServeMux pattern is known), the message's type and size, the
// event's group, the close status; a callback's error (or what kept it
// from running, such as dbctx.ErrBusy) is the span's. A hook opts
// already has runs first, its context under the span.
func ConsumerOptions(opts *wsconsumer.Options, o *Options) *wsconsumer.Options {
	var c wsconsumer.Options
	if opts != nil {
		c = *opts
	}
	oo := o.withDefaults()
	tracer := oo.tracer()
	onCallback := c.OnCallback
	c.OnCallback = func(ctx context.Context, cb wsconsumer.Callback) (context.Context, func(error)) {
		var before func(error)
		if onCallback != nil {
			ctx, before = onCallback(ctx, cb)
		}
		name, kind := SpanConnect, trace.SpanKindInternal
		attrs := make([]attribute.KeyValue, 0, 4)
		if route := routeOf(cb.Session.Request().Pattern); route != "" {
			attrs = append(attrs, semconv.HTTPRoute(route))
		}
		switch cb.Kind {
		case wsconsumer.CallbackReceive:
			name, kind = SpanReceive, trace.SpanKindServer
			typ := "text"
			if cb.MessageType == websocket.MessageBinary {
				typ = "binary"
			}
			attrs = append(attrs, attribute.String("dbscope.websocket.message.type", typ),
				attribute.Int("dbscope.websocket.message.size", cb.Size))
		case wsconsumer.CallbackEvent:
			name, kind = SpanEvent, trace.SpanKindConsumer
			attrs = append(attrs, attribute.String("dbscope.group", cb.Event.Group),
				attribute.Int("dbscope.group.event.size", cb.Size))
			if cb.Event.Gap {
				attrs = append(attrs, attribute.Bool("dbscope.group.event.gap", true))
			}
		case wsconsumer.CallbackDisconnect:
			name = SpanDisconnect
			attrs = append(attrs, attribute.Int("dbscope.websocket.close_code", int(cb.Code)))
		}
		so := []trace.SpanStartOption{trace.WithSpanKind(kind), trace.WithAttributes(attrs...)}
		if cb.Kind != wsconsumer.CallbackConnect {
			so = append(so, trace.WithNewRoot())
			if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
				so = append(so, trace.WithLinks(trace.Link{SpanContext: sc}))
			}
		}
		_, span := tracer.Start(ctx, name, so...)
		return withSpan(ctx, span), ending(span, before)
	}
	return &c
}

// routeOf returns the path of a ServeMux pattern ("GET example.com/ws/{room}"
// has /ws/{room}), or "".
func routeOf(pattern string) string {
	if _, rest, ok := strings.Cut(pattern, " "); ok {
		pattern = rest
	}
	if i := strings.IndexByte(pattern, '/'); i >= 0 {
		return pattern[i:]
	}
	return ""
}
