package dbotel_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// A service traces its statements with the Tracer on the pgx config, its
// pool with PoolOptions, and its requests with otelhttp, outside
// middleware.DB. Here the spans go to a recorder, in place of an
// exporter, to show the tree of one request.
func Example() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	o := &dbotel.Options{TracerProvider: tp} // nil: the global providers

	cfg, err := pgx.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	cfg.Tracer = dbotel.NewTracer(o)
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	pool := dbctx.New(db, dbotel.PoolOptions(&dbctx.Options{MaxWorkers: 4}, o))
	defer pool.Close()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /answer", func(w http.ResponseWriter, r *http.Request) {
		var n int
		const q = "-- name: GetAnswer :one\nSELECT 42"
		if err := dbctx.From(r.Context()).QueryRowContext(r.Context(), q).Scan(&n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, n)
	})
	handler := otelhttp.NewHandler(middleware.DB(pool)(mux), "http", otelhttp.WithTracerProvider(tp))

	srv := httptest.NewServer(handler) // http.ListenAndServe(addr, handler)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/answer")
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	for _, s := range spans.Ended() {
		fmt.Printf("%s (parent: %t)", s.Name(), s.Parent().IsValid())
		for _, e := range s.Events() {
			fmt.Printf(" [%s]", e.Name)
		}
		fmt.Println()
	}
	// Output:
	// GetAnswer (parent: true)
	// GET (parent: false) [dbscope.pin]
}

// Each websocket message gets a span of its own, its statements' spans
// under it.
func ExampleConsumerOptions() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	o := &dbotel.Options{TracerProvider: tp}

	cfg, err := pgx.ParseConfig(os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	cfg.Tracer = dbotel.NewTracer(o)
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	pool := dbctx.New(db, dbotel.PoolOptions(nil, o))
	defer pool.Close()

	replied := make(chan struct{})
	ws := wsconsumer.NewAsync(pool, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			defer close(replied)
			n, err := dbctx.DoValue(ctx, func(ctx context.Context, sc *dbctx.Scope) (n int, err error) {
				err = sc.QueryRowContext(ctx, "-- name: Length :one\nSELECT length($1::text)", string(data)).Scan(&n)
				return n, err
			})
			if err != nil {
				return err
			}
			return s.SendText(ctx, fmt.Sprint(n))
		},
	}, dbotel.ConsumerOptions(nil, o))
	srv := httptest.NewServer(ws)
	defer srv.Close()
	defer ws.Shutdown(context.Background())

	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer c.CloseNow()
	c.Write(ctx, websocket.MessageText, []byte("hello"))
	_, reply, _ := c.Read(ctx)
	<-replied
	c.Close(websocket.StatusNormalClosure, "")
	ws.Shutdown(ctx) // the callback's span has ended

	fmt.Println("reply:", string(reply))
	for _, s := range spans.Ended() {
		fmt.Printf("%s (parent: %t)\n", s.Name(), s.Parent().IsValid())
	}
	// Output:
	// reply: 5
	// Length (parent: true)
	// websocket receive (parent: false)
}

// RegisterMetrics reports the pool under OpenTelemetry's names for
// database connection pools, and dbscope's own counters beside them.
func ExampleRegisterMetrics() {
	reader := sdkmetric.NewManualReader() // in place of a periodic reader and an exporter
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	o := &dbotel.Options{MeterProvider: mp, PoolName: "primary"}

	db, err := sql.Open("pgx", os.Getenv("DATABASE_URL"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, dbotel.PoolOptions(&dbctx.Options{MaxWorkers: 4}, o))
	defer pool.Close()
	reg, err := dbotel.RegisterMetrics(pool, o)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Unregister()

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		fmt.Println(m.Name, m.Unit)
	}
	// Output:
	// db.client.connection.count {connection}
	// db.client.connection.max {connection}
	// db.client.connection.pending_requests {request}
	// db.client.connection.timeouts {timeout}
	// dbscope.pool.acquired {connection}
	// dbscope.pool.retries {statement}
	// dbscope.pool.resets {reset}
	// dbscope.pool.sequence_resets {reset}
	// dbscope.pool.settings_applied {round_trip}
	// dbscope.pool.outcomes_unknown {statement}
	// dbscope.pool.rolled_back {transaction}
	// dbscope.pool.leaks {scope}
	// dbscope.pool.connect_errors {error}
	// dbscope.pool.discarded {connection}
}
