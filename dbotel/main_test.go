package dbotel_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sqlcpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// telemetry is an SDK of the test's own: spans recorded in memory,
// metrics read on demand.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	reader *sdkmetric.ManualReader
	opts   *dbotel.Options
}

func newTelemetry(t *testing.T) *telemetry {
	t.Helper()
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		tp.Shutdown(context.Background())
		mp.Shutdown(context.Background())
	})
	return &telemetry{spans: spans, reader: reader, opts: &dbotel.Options{TracerProvider: tp, MeterProvider: mp, PoolName: "test"}}
}

// newPool returns a pool over a schema of its own, with the items table
// of internal/sqlcpgx, whose connections are traced by tel's Tracer and
// which is made with PoolOptions; the invariants are checked at the end.
func (tel *telemetry) newPool(t *testing.T, opts *dbctx.Options, mode pgx.QueryExecMode) (*dbctx.Pool, *pgtest.Env) {
	t.Helper()
	env := pgtest.New(t)
	cfg, err := pgx.ParseConfig(env.DSN())
	if err != nil {
		t.Fatal(err)
	}
	if mode != 0 {
		cfg.DefaultQueryExecMode = mode
	}
	cfg.Tracer = dbotel.NewTracer(tel.opts)
	db := stdlib.OpenDB(*cfg)
	t.Cleanup(func() { db.Close() })
	p := dbctx.New(db, dbotel.PoolOptions(opts, tel.opts))
	t.Cleanup(func() {
		dbtest.Clean(t, p, env)
		p.Close()
	})
	if _, err := db.Exec(sqlcpgx.Schema); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO items (name) VALUES ('first')`); err != nil {
		t.Fatal(err)
	}
	return p, env
}

// ended returns the spans ended so far.
func (tel *telemetry) ended() []sdktrace.ReadOnlySpan { return tel.spans.Ended() }

// waitSpan waits for a span named name to end, and returns it.
func (tel *telemetry) waitSpan(t *testing.T, name string) sdktrace.ReadOnlySpan {
	t.Helper()
	var found sdktrace.ReadOnlySpan
	if err := dbtest.Wait(10*time.Second, func() bool {
		found = find(tel.ended(), name)
		return found != nil
	}); err != nil {
		t.Fatalf("no span %q ended; the spans:\n%s", name, dump(tel.ended()))
	}
	return found
}

// find returns the last span named name, or nil.
func find(spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	for i := len(spans) - 1; i >= 0; i-- {
		if spans[i].Name() == name {
			return spans[i]
		}
	}
	return nil
}

// children returns the names of parent's children, in the order they
// ended.
func children(spans []sdktrace.ReadOnlySpan, parent sdktrace.ReadOnlySpan) []string {
	var out []string
	for _, s := range spans {
		if s.Parent().SpanID() == parent.SpanContext().SpanID() && s.Parent().TraceID() == parent.SpanContext().TraceID() {
			out = append(out, s.Name())
		}
	}
	return out
}

// wantChildren fails t unless parent's children are want, in order.
func wantChildren(t *testing.T, spans []sdktrace.ReadOnlySpan, parent sdktrace.ReadOnlySpan, want ...string) {
	t.Helper()
	if got := children(spans, parent); !slices.Equal(got, want) {
		t.Fatalf("children of %q: %q, want %q\nall spans:\n%s", parent.Name(), got, want, dump(spans))
	}
}

// dump lists spans, for failures.
func dump(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s (%s, parent %s) %v\n", s.Name(), s.SpanContext().SpanID(), s.Parent().SpanID(), s.Attributes())
	}
	return b.String()
}

// attr returns the value of s's attribute key.
func attr(s sdktrace.ReadOnlySpan, key string) attribute.Value {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value
		}
	}
	return attribute.Value{}
}

// events returns the attributes of s's events named name.
func events(s sdktrace.ReadOnlySpan, name string) []map[string]attribute.Value {
	var out []map[string]attribute.Value
	for _, e := range s.Events() {
		if e.Name != name {
			continue
		}
		m := map[string]attribute.Value{}
		for _, kv := range e.Attributes {
			m[string(kv.Key)] = kv.Value
		}
		out = append(out, m)
	}
	return out
}

// holdSlot takes p's one slot in a Do until release is called.
func holdSlot(t *testing.T, p *dbctx.Pool) (release func()) {
	t.Helper()
	held, rel, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.Exec(ctx, "SELECT 1"); err != nil {
				return err
			}
			close(held)
			<-rel
			return nil
		})
	}()
	select {
	case <-held:
	case err := <-done:
		t.Fatalf("holding the slot: %v", err)
	}
	return func() {
		close(rel)
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}
