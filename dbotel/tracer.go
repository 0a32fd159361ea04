package dbotel

import (
	"context"
	"errors"
	"strings"
	"unicode"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
)

// SpanPrelude is the name of the span of a prelude that dbscope sends in a
// round trip of its own (dbctx.Prelude.Alone).
const SpanPrelude = "dbscope prelude"

// Tracer makes a span for each statement run on a pgx connection, under
// the span in the statement's context: pgx's [pgx.QueryTracer],
// [pgx.BatchTracer] and [pgx.CopyFromTracer]. Set it as the Tracer of the
// pgx.ConnConfig that the pool's *sql.DB connects with
// (stdlib.OpenDB(*cfg)). A statement whose context has no span, or one
// not sampled, gets none: statements are part of a unit of work.
//
// A span is named for the statement: sqlc's query name where the text
// begins with sqlc's comment (-- name: GetItem :one), which is then
// db.query.summary too; else its first keyword (SELECT). It carries
// db.system.name, db.namespace, server.address, server.port (left out on
// PostgreSQL's default port, 5432, as OpenTelemetry's conventions say),
// db.operation.name, db.query.text (see [Options.NoQueryText]; the
// parameters are not recorded), and for a statement that failed,
// db.response.status_code and error.type (the SQLSTATE), its status
// Error and the error recorded with its message (PostgreSQL's or pgx's,
// which can quote a value it could not read, a parameter's too: invalid
// input syntax for type integer: "…"; under NoQueryText the status
// description is the error.type, and the message is left out).
//
// What dbscope sends before a statement in the same round trip (a
// [dbctx.Prelude]: the reset an earlier user of the connection left owed,
// Atomic's BEGIN, the settings the context declares) is told of by
// attributes of the statement's span, not spans of its own:
// dbscope.prelude.reset, dbscope.prelude.begin, dbscope.prelude.settings
// (the settings' names; their values are never recorded) and
// dbscope.prelude.local. A prelude sent in a round trip of its own gets a
// span ([SpanPrelude]), with those attributes. A batch's span
// (db.operation.name BATCH) leaves the prelude's queries out of its
// db.operation.batch.size and db.query.text.
//
// A Tracer is safe for concurrent use.
type Tracer struct {
	tracer trace.Tracer
	noText bool
}

var (
	_ pgx.QueryTracer    = (*Tracer)(nil)
	_ pgx.BatchTracer    = (*Tracer)(nil)
	_ pgx.CopyFromTracer = (*Tracer)(nil)
)

// NewTracer returns a Tracer that makes its spans with o's TracerProvider
// (nil: defaults).
func NewTracer(o *Options) *Tracer {
	oo := o.withDefaults()
	return &Tracer{tracer: oo.tracer(), noText: oo.NoQueryText}
}

// TraceQueryStart starts a statement's span.
func (t *Tracer) TraceQueryStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	attrs := connAttrs(conn)
	pr, ok := dbctx.PreludeOf(conn)
	var name string
	if ok && pr.Alone {
		name = SpanPrelude
	} else {
		name, attrs = t.named(data.SQL, attrs)
	}
	if !t.noText {
		attrs = append(attrs, semconv.DBQueryText(data.SQL))
	}
	if ok {
		attrs = preludeAttrs(pr, attrs)
	}
	ctx, _ = t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// TraceQueryEnd ends a statement's span.
func (t *Tracer) TraceQueryEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryEndData) {
	t.endStarted(ctx, data.Err)
}

// batchKey is the context key of a batch's state.
type batchKey struct{}

// batch is a batch's state, from its start to its end.
type batch struct {
	span trace.Span
	skip int // queries of a prelude, told of first
	seen int // queries told of so far
	err  error
}

// TraceBatchStart starts a batch's span: the batch's, or, for the batch
// dbscope sends a statement in after its prelude (simple_protocol exec
// mode), the statement's.
func (t *Tracer) TraceBatchStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceBatchStartData) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() || data.Batch == nil {
		return ctx
	}
	queries := data.Batch.QueuedQueries
	attrs := connAttrs(conn)
	pr, ok := dbctx.PreludeOf(conn)
	b := &batch{}
	if ok {
		b.skip = min(pr.Queries, len(queries))
		attrs = preludeAttrs(pr, attrs)
	}
	own := queries[b.skip:]
	var name string
	switch {
	case ok && pr.InBatch && len(own) == 1:
		name, attrs = t.named(own[0].SQL, attrs)
		if !t.noText {
			attrs = append(attrs, semconv.DBQueryText(own[0].SQL))
		}
	default:
		name = "BATCH"
		attrs = append(attrs, semconv.DBOperationName(name), semconv.DBOperationBatchSize(len(own)))
		if !t.noText {
			texts := make([]string, len(own))
			for i, q := range own {
				texts[i] = q.SQL
			}
			attrs = append(attrs, semconv.DBQueryText(strings.Join(texts, "; ")))
		}
	}
	ctx, b.span = t.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return context.WithValue(ctx, batchKey{}, b)
}

// TraceBatchQuery notes the outcome of one query of a batch.
func (t *Tracer) TraceBatchQuery(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchQueryData) {
	b, _ := ctx.Value(batchKey{}).(*batch)
	if b == nil {
		return
	}
	b.seen++
	if data.Err != nil && b.err == nil {
		b.err = data.Err
	}
}

// TraceBatchEnd ends a batch's span.
func (t *Tracer) TraceBatchEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceBatchEndData) {
	b, _ := ctx.Value(batchKey{}).(*batch)
	if b == nil {
		return
	}
	err := b.err
	if err == nil {
		err = data.Err
	}
	t.endStatement(b.span, err)
}

// TraceCopyFromStart starts a COPY's span.
func (t *Tracer) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, data pgx.TraceCopyFromStartData) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	table := strings.Join(data.TableName, ".")
	attrs := append(connAttrs(conn), semconv.DBOperationName("COPY"), semconv.DBCollectionName(table))
	ctx, _ = t.tracer.Start(ctx, "COPY "+table, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	return ctx
}

// TraceCopyFromEnd ends a COPY's span.
func (t *Tracer) TraceCopyFromEnd(ctx context.Context, _ *pgx.Conn, data pgx.TraceCopyFromEndData) {
	t.endStarted(ctx, data.Err)
}

// endStarted ends the span a start callback put in ctx, if it started one:
// where it found no recording span, it started none, and the span in ctx
// is not recording either.
func (t *Tracer) endStarted(ctx context.Context, err error) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		t.endStatement(span, err)
	}
}

// named returns the span name of a statement, its attributes extended with
// db.operation.name and db.query.summary where known.
func (t *Tracer) named(sql string, attrs []attribute.KeyValue) (string, []attribute.KeyValue) {
	query, op := queryName(sql)
	if op != "" {
		attrs = append(attrs, semconv.DBOperationName(op))
	}
	switch {
	case query != "":
		return query, append(attrs, semconv.DBQuerySummary(query))
	case op != "":
		return op, attrs
	}
	return "postgresql", attrs
}

// queryName returns sqlc's name of the query sql, if it begins with sqlc's
// comment (-- name: GetItem :one), and its operation: its first keyword,
// in upper case, past comments.
func queryName(sql string) (query, op string) {
	s := strings.TrimLeftFunc(sql, unicode.IsSpace)
	if rest, ok := strings.CutPrefix(s, "-- name: "); ok {
		if f := strings.Fields(strings.SplitN(rest, "\n", 2)[0]); len(f) > 0 {
			query = f[0]
		}
	}
	for {
		s = strings.TrimLeftFunc(s, unicode.IsSpace)
		switch {
		case strings.HasPrefix(s, "--"):
			_, rest, ok := strings.Cut(s, "\n")
			if !ok {
				return query, ""
			}
			s = rest
		case strings.HasPrefix(s, "/*"):
			_, rest, ok := strings.Cut(s[2:], "*/")
			if !ok {
				return query, ""
			}
			s = rest
		default:
			end := strings.IndexFunc(s, func(r rune) bool { return !unicode.IsLetter(r) })
			if end < 0 {
				end = len(s)
			}
			return query, strings.ToUpper(s[:end])
		}
	}
}

// preludeAttrs returns attrs with the attributes of pr.
func preludeAttrs(pr dbctx.Prelude, attrs []attribute.KeyValue) []attribute.KeyValue {
	if pr.Reset {
		attrs = append(attrs, attribute.Bool("dbscope.prelude.reset", true))
	}
	if pr.Begin {
		attrs = append(attrs, attribute.Bool("dbscope.prelude.begin", true))
	}
	if len(pr.Settings) > 0 {
		attrs = append(attrs, attribute.StringSlice("dbscope.prelude.settings", pr.Settings),
			attribute.Bool("dbscope.prelude.local", pr.Local))
	}
	return attrs
}

// endStatement ends a statement's span with err as its outcome. Under
// NoQueryText the error's message is left out, as the text is: PostgreSQL
// and pgx write into it the value they could not read (invalid input
// syntax for type integer: "…"), a parameter's as readily as a literal's.
func (t *Tracer) endStatement(span trace.Span, err error) {
	if err == nil {
		span.End()
		return
	}
	var pe *pgconn.PgError
	errType := ""
	if errors.As(err, &pe) {
		errType = pe.Code
		span.SetAttributes(semconv.DBResponseStatusCode(pe.Code), semconv.ErrorTypeKey.String(pe.Code))
	} else {
		errType = semconv.ErrorType(err).Value.AsString()
		span.SetAttributes(semconv.ErrorTypeKey.String(errType))
	}
	if t.noText {
		span.SetStatus(codes.Error, errType)
		span.End()
		return
	}
	end(span, err)
}

// connKey is the key under which a connection's attributes are kept in
// its pgconn.PgConn's CustomData: a connection's config does not change,
// and pgx copies it whole for every call of Config.
const connKey = "github.com/dbscope/dbscope/dbotel.attrs"

// connAttrs returns a new slice of the attributes of conn's every
// statement, with room for those of one statement.
func connAttrs(conn *pgx.Conn) []attribute.KeyValue {
	data := conn.PgConn().CustomData()
	base, ok := data[connKey].([]attribute.KeyValue)
	if !ok {
		cfg := conn.Config()
		base = []attribute.KeyValue{semconv.DBSystemNamePostgreSQL, semconv.DBNamespace(cfg.Database),
			semconv.ServerAddress(cfg.Host)}
		if cfg.Port != 5432 {
			base = append(base, semconv.ServerPort(int(cfg.Port)))
		}
		if data != nil {
			data[connKey] = base
		}
	}
	return append(make([]attribute.KeyValue, 0, len(base)+8), base...)
}
