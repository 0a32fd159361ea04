package dbotel_test

import (
	"context"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Under NoQueryText a value a statement carries does not reach its span,
// even where the statement fails on it: PostgreSQL's message (invalid
// input syntax) and pgx's (unable to encode) quote it, and the span keeps
// the SQLSTATE or the error's type instead.
func TestNoQueryTextFailedStatement(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-4ccount"
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			tel := newTelemetry(t)
			tel.opts.NoQueryText = true
			p, _ := tel.newPool(t, nil, mode)
			tracer := tel.opts.TracerProvider.Tracer("test")
			ctx, unit := tracer.Start(context.Background(), "unit")
			for _, arg := range []any{secret, struct{ S string }{secret}} {
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.Exec(ctx, "SELECT $1::int", arg)
					return err
				})
				if err == nil || !strings.Contains(err.Error(), secret) {
					t.Fatalf("%T: the error does not quote the value (what the test relies on): %v", arg, err)
				}
			}
			unit.End()
			n := 0
			for _, s := range tel.ended() {
				if s.SpanKind() != trace.SpanKindClient {
					continue
				}
				n++
				if s.Status().Code != codes.Error || s.Status().Description == "" {
					t.Errorf("%s: status %v, want Error with the error's type", s.Name(), s.Status())
				}
				if where := quoting(s, secret); where != "" {
					t.Errorf("%s: the value in its %s", s.Name(), where)
				}
			}
			if n != 2 {
				t.Fatalf("%d statement spans, want 2", n)
			}
		})
	}
}

// quoting returns where s carries v, or "".
func quoting(s sdktrace.ReadOnlySpan, v string) string {
	if strings.Contains(s.Status().Description, v) {
		return "status"
	}
	for _, a := range s.Attributes() {
		if strings.Contains(a.Value.Emit(), v) {
			return "attribute " + string(a.Key)
		}
	}
	for _, e := range s.Events() {
		for _, a := range e.Attributes {
			if strings.Contains(a.Value.Emit(), v) {
				return "event " + e.Name
			}
		}
	}
	return ""
}
