package dbotel_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sqlcpgx"
	"github.com/dbscope/dbscope/middleware"
	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

var tenant = dbctx.NewSetting("app.tenant")

// An HTTP request's span (otelhttp's) is the unit of work: the wait for
// its slot and its pin are events of it, its statements' spans are its
// children, named by sqlc where sqlc named them, the settings sent before
// one in its round trip an attribute of that statement's span.
func TestHTTPRequest(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "asserts what dbscope sends on a direct connection: behind a pooler the pool finds it, and sends the settings per transaction")
	tel := newTelemetry(t)
	p, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1}, 0)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items/{id}", func(w http.ResponseWriter, r *http.Request) {
		ctx := tenant.With(r.Context(), "42")
		q := sqlcpgx.New(dbctx.From(ctx))
		item, err := q.GetItem(ctx, 1)
		if err == nil {
			_, err = dbctx.From(ctx).ExecContext(ctx, "SELECT 2")
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		io.WriteString(w, item.Name)
	})
	srv := httptest.NewServer(otelhttp.NewHandler(middleware.DB(p)(mux), "items",
		otelhttp.WithTracerProvider(tel.opts.TracerProvider)))
	defer srv.Close()

	// The request queues behind a scope that holds the one slot.
	release := holdSlot(t, p)
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(srv.URL + "/items/1")
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		got <- string(body)
	}()
	dbtest.Eventually(t, "the request to queue", func() bool { return p.Stats().Waiting == 1 })
	release()
	if body := <-got; body != "first" {
		t.Fatalf("response %q", body)
	}

	req := tel.waitSpan(t, "GET") // otelhttp names it by the method
	spans := tel.ended()
	wantChildren(t, spans, req, "GetItem", "SELECT")
	get := find(spans, "GetItem")
	if attr(get, "db.query.summary").AsString() != "GetItem" || attr(get, "db.operation.name").AsString() != "SELECT" ||
		!slices.Equal(attr(get, "dbscope.prelude.settings").AsStringSlice(), []string{"app.tenant"}) ||
		attr(get, "db.system.name").AsString() != "postgresql" || get.SpanKind() != trace.SpanKindClient {
		t.Fatalf("GetItem's span: %v", get.Attributes())
	}
	// The session carries the tenant by then: nothing went before SELECT 2.
	if sel := find(spans, "SELECT"); attr(sel, "dbscope.prelude.settings").Type() != 0 || attr(sel, "db.query.text").AsString() != "SELECT 2" {
		t.Fatalf("SELECT 2's span: %v", sel.Attributes())
	}
	waits := events(req, dbotel.EventWait)
	if len(waits) != 1 || !waits[0]["dbscope.slot.wait.queued"].AsBool() || waits[0]["dbscope.slot.wait.outcome"].AsString() != "granted" ||
		waits[0]["dbscope.slot.wait.seconds"].AsFloat64() <= 0 {
		t.Fatalf("wait events of the request: %v", waits)
	}
	pins := events(req, dbotel.EventPin)
	if len(pins) != 1 || pins[0]["dbscope.pin.outcome"].AsString() != "pinned" {
		t.Fatalf("pin events of the request: %v", pins)
	}
	if find(spans, "pool.acquire") != nil || len(children(spans, req)) != 2 {
		t.Fatal("spans other than the statements' under the request")
	}
}

// A Do whose context has no span gets one, with its statements under it;
// one whose context has a span adds to that span.
func TestDo(t *testing.T) {
	t.Parallel()
	tel := newTelemetry(t)
	p, _ := tel.newPool(t, nil, 0)
	errWork := errors.New("work failed")
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := sqlcpgx.New(s).GetItem(ctx, 1); err != nil {
			return err
		}
		return errWork
	})
	if !errors.Is(err, errWork) {
		t.Fatal(err)
	}
	do := tel.waitSpan(t, dbotel.SpanDo)
	spans := tel.ended()
	wantChildren(t, spans, do, "GetItem")
	if do.Parent().IsValid() || do.Status().Description != errWork.Error() || len(events(do, dbotel.EventPin)) != 1 {
		t.Fatalf("Do's span: parent %v, status %v, events %v", do.Parent(), do.Status(), do.Events())
	}

	tracer := tel.opts.TracerProvider.Tracer("test")
	ctx, job := tracer.Start(context.Background(), "job")
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.Exec(ctx, "SELECT 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	job.End()
	spans = tel.ended()
	jobSpan := find(spans, "job")
	wantChildren(t, spans, jobSpan, "SELECT")
	if n := len(events(jobSpan, dbotel.EventPin)); n != 1 {
		t.Fatalf("job's span has %d pin events, want 1", n)
	}
	if n := countNamed(spans, dbotel.SpanDo); n != 1 {
		t.Fatalf("%d Do spans, want the first Do's alone", n)
	}
}

func countNamed(spans []sdktrace.ReadOnlySpan, name string) int {
	n := 0
	for _, s := range spans {
		if s.Name() == name {
			n++
		}
	}
	return n
}

// What dbscope sends before a statement shows on the statement's span, in
// every exec mode: no span of its own where it shares the statement's
// round trip (in simple_protocol mode, no batch span either), one where
// it goes alone; a batch's span leaves it out.
func TestPrelude(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "asserts what dbscope sends on a direct connection: behind a pooler the pool finds it, and sends the settings per transaction")
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			tel := newTelemetry(t)
			p, _ := tel.newPool(t, &dbctx.Options{MaxWorkers: 1}, mode)
			p.DB().SetMaxOpenConns(1) // one session: each unit sees what the last left
			tracer := tel.opts.TracerProvider.Tracer("test")
			// unit runs fn under a span of its own, and returns the spans
			// of the statements under it.
			unit := func(name string, fn func(ctx context.Context, s *dbctx.Scope) error) []string {
				t.Helper()
				ctx, span := tracer.Start(context.Background(), name)
				err := p.Do(ctx, fn)
				span.End()
				if err != nil {
					t.Fatal(err)
				}
				spans := tel.ended()
				return children(spans, find(spans, name))
			}
			stmt := func(name string) map[string]any {
				s := find(tel.ended(), name)
				m := map[string]any{}
				for _, kv := range s.Attributes() {
					m[string(kv.Key)] = kv.Value.AsInterface()
				}
				return m
			}

			if got := unit("tenant", func(ctx context.Context, s *dbctx.Scope) error {
				_, err := sqlcpgx.New(s).GetItem(tenant.With(ctx, "7"), 1)
				return err
			}); !slices.Equal(got, []string{"GetItem"}) {
				t.Fatalf("tenant: %q\n%s", got, dump(tel.ended()))
			}
			if a := stmt("GetItem"); !slices.Equal(a["dbscope.prelude.settings"].([]string), []string{"app.tenant"}) {
				t.Fatalf("GetItem: %v", a)
			}

			// The reset a dirty unit leaves owed rides with the next
			// unit's first statement when the pool hands the connection
			// straight on; on a loaded machine it may give it back to the
			// *sql.DB first (after 10 ms idle), reset off the path: then
			// again, until it rides (a reset that never does fails).
			for try := 1; ; try++ {
				unit("dirty", func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.Exec(ctx, "SET work_mem = '8MB'")
					return err
				})
				got := unit("after dirty", func(ctx context.Context, s *dbctx.Scope) error {
					_, err := sqlcpgx.New(s).CountItems(ctx)
					return err
				})
				if try == 1 && mode == pgx.QueryExecModeCacheStatement && slices.Equal(got, []string{dbotel.SpanPrelude, "CountItems"}) {
					// Not yet described on the connection after a SET:
					// the reset went first, alone (see dbctx's package
					// doc); described now, it rides the next time.
					continue
				}
				if !slices.Equal(got, []string{"CountItems"}) {
					t.Fatalf("after dirty: %q", got)
				}
				a := stmt("CountItems")
				if a["dbscope.prelude.reset"] == true {
					break
				}
				if try == 50 {
					t.Fatalf("CountItems, 50 times: %v", a)
				}
			}

			if got := unit("atomic", func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := sqlcpgx.New(s).RenameItem(ctx, sqlcpgx.RenameItemParams{ID: 1, Name: "first"})
					return err
				})
			}); !slices.Equal(got, []string{"RenameItem", "COMMIT"}) {
				t.Fatalf("atomic: %q", got)
			}
			if a := stmt("RenameItem"); a["dbscope.prelude.begin"] != true {
				t.Fatalf("RenameItem: %v", a)
			}

			if got := unit("copy", func(ctx context.Context, s *dbctx.Scope) error {
				_, err := sqlcpgx.New(s).CopyItems(tenant.With(ctx, "8"), []string{"copied"})
				return err
			}); !slices.Equal(got, []string{dbotel.SpanPrelude, "COPY items"}) {
				t.Fatalf("copy: %q\n%s", got, dump(tel.ended()))
			}
			if a := stmt(dbotel.SpanPrelude); !slices.Equal(a["dbscope.prelude.settings"].([]string), []string{"app.tenant"}) {
				t.Fatalf("prelude: %v", a)
			}

			// COPY left the session dirty: the batch goes after the
			// reset; in cache_statement mode, after code (COPY), alone
			// first, since pgx's batch would bind the reset's statements
			// by names of its cache that such code can replace.
			got := unit("batch", func(ctx context.Context, s *dbctx.Scope) error {
				return sqlcpgx.New(s).RenameItems(ctx, []sqlcpgx.RenameItemParams{{ID: 1, Name: "a"}, {ID: 1, Name: "first"}}).Close()
			})
			resetIn := "BATCH"
			if mode == pgx.QueryExecModeCacheStatement {
				resetIn = dbotel.SpanPrelude
				if !slices.Equal(got, []string{dbotel.SpanPrelude, "BATCH"}) {
					t.Fatalf("batch: %q", got)
				}
			} else if !slices.Equal(got, []string{"BATCH"}) {
				t.Fatalf("batch: %q", got)
			}
			if a := stmt(resetIn); a["dbscope.prelude.reset"] != true {
				t.Fatalf("%s: %v", resetIn, a)
			}
			if a := stmt("BATCH"); a["db.operation.batch.size"] != int64(2) {
				t.Fatalf("BATCH: %v", a)
			}
		})
	}
}

// The span of a Do ends even where the done function of an OnDo the pool
// had already panics (dbctx logs the panic and goes on: the span was left
// open, and the statements' spans under it had no parent in the trace).
func TestDoSpanEndsWhenWrappedDonePanics(t *testing.T) {
	t.Parallel()
	tel := newTelemetry(t)
	p, _ := tel.newPool(t, &dbctx.Options{
		Logger: slog.New(slog.DiscardHandler),
		OnDo: func(ctx context.Context) (context.Context, func(error)) {
			return ctx, func(error) { panic("the wrapped hook's bug") }
		},
	}, 0)
	if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.Exec(ctx, "SELECT 1")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, s := range tel.spans.Started() {
		if s.EndTime().IsZero() {
			t.Errorf("span %q never ended", s.Name())
		}
	}
	wantChildren(t, tel.ended(), tel.waitSpan(t, dbotel.SpanDo), "SELECT")
}
