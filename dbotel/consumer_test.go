package dbotel_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sqlcpgx"
	"github.com/dbscope/dbscope/wsconsumer"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// A websocket's message and a group's event each get a span of their own,
// linked to the upgrade request's, with their statements' spans under
// them and the slot wait and pin on them, in both styles; Connect's span
// is a child of the upgrade request's.
func TestWebsocket(t *testing.T) {
	t.Parallel()
	styles := map[string]func(*dbctx.Pool, wsconsumer.Consumer, *wsconsumer.Options) *wsconsumer.Handler{
		"sync": wsconsumer.NewSync, "async": wsconsumer.NewAsync,
	}
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tel := newTelemetry(t)
			p, _ := tel.newPool(t, nil, 0)
			layer, err := groups.New(groups.NewMemory(), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer layer.Close()
			h := style(p, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					return s.Join(ctx, "room")
				},
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
					// dbctx.Do runs on the socket's scope in the sync
					// style, on one of its own in the async style.
					return dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
						item, err := sqlcpgx.New(sc).GetItem(ctx, 1)
						if err != nil {
							return err
						}
						return s.SendText(ctx, item.Name)
					})
				},
				Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
					return dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
						name, err := sqlcpgx.New(sc).GetName(ctx, 1)
						if err != nil {
							return err
						}
						return s.SendText(ctx, fmt.Sprintf("%s %s", e.Data, name))
					})
				},
			}, dbotel.ConsumerOptions(&wsconsumer.Options{Layer: layer}, tel.opts))
			srv := httptest.NewServer(otelhttp.NewHandler(h, "upgrade", otelhttp.WithTracerProvider(tel.opts.TracerProvider)))
			defer srv.Close()
			defer h.Shutdown(context.Background())

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			if err := c.Write(ctx, websocket.MessageText, []byte("get")); err != nil {
				t.Fatal(err)
			}
			if _, data, err := c.Read(ctx); err != nil || string(data) != "first" {
				t.Fatalf("reply %q, %v", data, err)
			}
			if err := layer.Send(ctx, "room", []byte("hi")); err != nil {
				t.Fatal(err)
			}
			if _, data, err := c.Read(ctx); err != nil || string(data) != "hi first" {
				t.Fatalf("event reply %q, %v", data, err)
			}

			connect := tel.waitSpan(t, dbotel.SpanConnect)
			receive := tel.waitSpan(t, dbotel.SpanReceive)
			event := tel.waitSpan(t, dbotel.SpanEvent)
			spans := tel.ended()
			upgrade := connect.Parent() // otelhttp's span, still open while the socket is
			if !upgrade.IsValid() {
				t.Fatalf("connect has no parent:\n%s", dump(spans))
			}
			for _, s := range []struct {
				span sdktrace.ReadOnlySpan
				kind trace.SpanKind
				stmt string
			}{{receive, trace.SpanKindServer, "GetItem"}, {event, trace.SpanKindConsumer, "GetName"}} {
				sp := s.span
				if sp.Parent().IsValid() || len(sp.Links()) != 1 || sp.Links()[0].SpanContext.SpanID() != upgrade.SpanID() ||
					sp.SpanKind() != s.kind {
					t.Fatalf("%s: parent %v, links %v, kind %v: want a root of its own linked to the upgrade's span %v",
						sp.Name(), sp.Parent(), sp.Links(), sp.SpanKind(), upgrade.SpanID())
				}
				wantChildren(t, spans, sp, s.stmt)
				if n := len(events(sp, dbotel.EventPin)); n != 1 {
					t.Fatalf("%s: %d pin events, want 1:\n%v", sp.Name(), n, sp.Events())
				}
			}
			if g := attr(event, "dbscope.group").AsString(); g != "room" {
				t.Fatalf("event's group %q", g)
			}
			if typ := attr(receive, "dbscope.websocket.message.type").AsString(); typ != "text" {
				t.Fatalf("message type %q", typ)
			}
			if n := countNamed(spans, dbotel.SpanDo); n != 0 {
				t.Fatalf("%d Do spans: a callback's Do adds to the callback's span\n%s", n, dump(spans))
			}
		})
	}
}

// A socket that goes cancels the statement of its traced callback, in
// both styles (the span's context passes the socket's cancellation on),
// and the callback's span ends with the error.
func TestWebsocketGone(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request")
	styles := map[string]func(*dbctx.Pool, wsconsumer.Consumer, *wsconsumer.Options) *wsconsumer.Handler{
		"sync": wsconsumer.NewSync, "async": wsconsumer.NewAsync,
	}
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tel := newTelemetry(t)
			p, env := tel.newPool(t, nil, 0)
			h := style(p, wsconsumer.Consumer{
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
					return dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
						_, err := sc.ExecContext(ctx, "SELECT pg_sleep(30)")
						return err
					})
				},
			}, dbotel.ConsumerOptions(&wsconsumer.Options{Logger: slog.New(slog.DiscardHandler)}, tel.opts))
			srv := httptest.NewServer(h)
			defer srv.Close()
			defer h.Shutdown(context.Background())
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Write(ctx, websocket.MessageText, []byte("sleep")); err != nil {
				t.Fatal(err)
			}
			dbtest.Eventually(t, "the query", func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") == 1 })
			c.CloseNow()
			dbtest.Eventually(t, "the query to stop", func() bool { return dbtest.ActiveQueries(t, env, "SELECT pg_sleep") == 0 })
			receive := tel.waitSpan(t, dbotel.SpanReceive)
			if receive.Status().Code != codes.Error {
				t.Fatalf("receive's span: status %v", receive.Status())
			}
			wantChildren(t, tel.ended(), receive, "SELECT")
		})
	}
}

func TestRouteOf(t *testing.T) {
	for pattern, want := range map[string]string{
		"":                          "",
		"/ws":                       "/ws",
		"GET /ws/{room}":            "/ws/{room}",
		"GET example.com/ws/{room}": "/ws/{room}",
		"example.com/ws":            "/ws",
		"GET  /ws":                  "/ws",
	} {
		if got := dbotel.RouteOf(pattern); got != want {
			t.Errorf("RouteOf(%q) = %q, want %q", pattern, got, want)
		}
	}
}
