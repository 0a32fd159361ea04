// Command consumer is what scripts/release-check builds and runs in a
// module of its own, outside the repository, against the published
// modules as go get fetched them from the simulated release: one use of
// each package a user imports. It needs PostgreSQL: $DATABASE_URL, else
// the server at 127.0.0.1:5432 as user postgres.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbotel"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "consumer:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dsn := os.Getenv("DATABASE_URL")
	if dsn == "" {
		dsn = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 2})
	defer pool.Close()

	// dbctx: a unit of work in a slot.
	var one int
	if err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT 1").Scan(&one)
	}); err != nil {
		return fmt.Errorf("dbctx: SELECT 1 through a Pool (set DATABASE_URL to a PostgreSQL): %w", err)
	}
	// dbctx: a setting declared for a unit of work reaches its statements.
	tenant := dbctx.NewSetting("app.tenant")
	var seen string
	if err := pool.Do(tenant.With(ctx, "t1"), func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT current_setting('app.tenant')").Scan(&seen)
	}); err != nil || seen != "t1" {
		return fmt.Errorf("dbctx: a Setting: saw %q: %v", seen, err)
	}

	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		return err
	}
	defer layer.Close()

	// middleware: a request scope; wsconsumer: a sync consumer that
	// queries in Receive, joins a group and forwards its events.
	mux := http.NewServeMux()
	mux.Handle("GET /one", middleware.DB(pool)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var n int
		if err := dbctx.From(r.Context()).QueryRowContext(r.Context(), "SELECT 1").Scan(&n); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, n)
	})))
	ws := wsconsumer.NewSync(pool, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			var n int
			if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT length($1::text)", string(data)).Scan(&n); err != nil {
				return err
			}
			if err := s.Join(ctx, "room"); err != nil {
				return err
			}
			return s.SendText(ctx, fmt.Sprint(n))
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			return s.Send(ctx, websocket.MessageText, e.Data)
		},
	}, &wsconsumer.Options{Layer: layer})
	defer ws.Shutdown(context.Background())
	mux.Handle("GET /ws", ws)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/one")
	if err != nil {
		return err
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "1" {
		return fmt.Errorf("middleware: GET /one: %s %s", resp.Status, body)
	}

	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/ws", nil)
	if err != nil {
		return fmt.Errorf("wsconsumer: %w", err)
	}
	defer c.CloseNow()
	for _, step := range []struct{ send, want string }{{"four", "4"}, {"", "hi"}} {
		if step.send != "" {
			err = c.Write(ctx, websocket.MessageText, []byte(step.send))
		} else {
			err = layer.Send(ctx, "room", []byte("hi"))
		}
		if err != nil {
			return err
		}
		_, got, err := c.Read(ctx)
		if err != nil || string(got) != step.want {
			return fmt.Errorf("wsconsumer: got %q (%v), want %q", got, err, step.want)
		}
	}
	c.Close(websocket.StatusNormalClosure, "")

	// natslayer: an engine made without a server to connect to.
	engine, err := natslayer.Connect("nats://127.0.0.1:1", &natslayer.Options{
		NATSOptions: []nats.Option{nats.RetryOnFailedConnect(true), nats.MaxReconnects(0)},
	})
	if err != nil {
		return fmt.Errorf("natslayer: %w", err)
	}
	if err := engine.Ready(); !errors.Is(err, natslayer.ErrNotConnected) {
		return fmt.Errorf("natslayer: Ready with no server: %v", err)
	}
	engine.Close()

	// dbprom: the collectors, gathered once.
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(dbprom.NewCollector(pool, nil), dbprom.NewGroupsCollector(layer, nil))
	mfs, err := reg.Gather()
	if err != nil {
		return fmt.Errorf("dbprom: %w", err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if m := mf.GetMetric(); len(m) == 1 && m[0].GetCounter() != nil {
			got[mf.GetName()] = m[0].GetCounter().GetValue()
		} else if len(m) == 1 && m[0].GetGauge() != nil {
			got[mf.GetName()] = m[0].GetGauge().GetValue()
		}
	}
	if got["dbscope_slots"] != 2 || got["dbscope_acquired_total"] < 1 || got["dbscope_groups_sent_total"] != 1 {
		return fmt.Errorf("dbprom: gathered %v", got)
	}

	if err := otel(ctx, dsn); err != nil {
		return fmt.Errorf("dbotel: %w", err)
	}
	fmt.Printf("consumer: dbctx, middleware, wsconsumer, groups, natslayer, dbprom and dbotel at work (%d metric families)\n", len(mfs))
	return nil
}

// otel traces a Do on a pool of its own and reads its metrics, with the
// OpenTelemetry SDK's in-memory exporters.
func otel(ctx context.Context, dsn string) error {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(context.Background())
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	o := &dbotel.Options{TracerProvider: tp, MeterProvider: mp}

	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return err
	}
	cfg.Tracer = dbotel.NewTracer(o)
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	pool := dbctx.New(db, dbotel.PoolOptions(&dbctx.Options{MaxWorkers: 1}, o))
	defer pool.Close()
	reg, err := dbotel.RegisterMetrics(pool, o)
	if err != nil {
		return err
	}
	defer reg.Unregister()
	_ = dbotel.ConsumerOptions(nil, o)

	var one int
	if err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "-- name: GetOne :one\nSELECT 1").Scan(&one)
	}); err != nil {
		return err
	}
	var names []string
	for _, s := range spans.Ended() {
		names = append(names, s.Name())
	}
	if strings.Join(names, " ") != "GetOne "+dbotel.SpanDo {
		return fmt.Errorf("spans %q, want GetOne under %s", names, dbotel.SpanDo)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		return err
	}
	if len(rm.ScopeMetrics) != 1 || len(rm.ScopeMetrics[0].Metrics) < 4 {
		return fmt.Errorf("metrics %+v", rm.ScopeMetrics)
	}
	return nil
}
