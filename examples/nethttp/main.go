// Command nethttp is a chat room whose state lives in PostgreSQL, served
// with the standard library's http.ServeMux: a page, a JSON API and two
// websocket endpoints, one per wsconsumer style. examples/chi is the same
// application on chi; the application itself, whose handlers and
// consumers show dbscope at work, is examples/internal/chatserver.
//
//	go run ./examples/nethttp            # http://127.0.0.1:8080
//	go run ./examples/nethttp -addr :9000
//	go run ./examples/nethttp -layer nats://127.0.0.1:4222   # rooms over NATS
//	go run ./examples/nethttp -admin-addr 127.0.0.1:9090 -server-timing=false   # as in production
//	go run ./examples/nethttp -otel   # OpenTelemetry: traces and metrics as JSON on stdout
//	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 go run ./examples/nethttp -otel   # to a collector
//
// It uses $DATABASE_URL; without it the local server at 127.0.0.1:5432,
// and without that a throwaway cluster it removes on exit. The rooms are
// shared by the instances through PostgreSQL LISTEN/NOTIFY, or with
// -layer through NATS.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/examples/internal/chatserver"
	"github.com/dbscope/dbscope/middleware"
)

func main() {
	addr := flag.String("addr", chatserver.EnvOr("ADDR", "127.0.0.1:8080"), "listen address (env ADDR)")
	layer := flag.String("layer", chatserver.EnvOr("LAYER", "postgres"),
		"what carries the rooms between instances: postgres, memory or a NATS URL such as nats://127.0.0.1:4222 (env LAYER)")
	adminAddr := flag.String("admin-addr", chatserver.EnvOr("ADMIN_ADDR", ""),
		"serve /metrics and /debug/dbstats here only, not on -addr (env ADMIN_ADDR); keep it off the public network")
	serverTiming := flag.Bool("server-timing", true, "send every client Server-Timing, its requests' time in the database")
	pooling := flag.Bool("transaction-pooling", os.Getenv("TRANSACTION_POOLING") == "1",
		"$DATABASE_URL goes through PgBouncer in transaction mode: settings go with each statement (env TRANSACTION_POOLING=1)")
	otel := flag.Bool("otel", os.Getenv("OTEL") == "1",
		"trace requests, sockets and statements and report the pool with OpenTelemetry: over OTLP/HTTP to $OTEL_EXPORTER_OTLP_ENDPOINT where set, else as JSON on stdout (env OTEL=1)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg := chatserver.Config{Addr: *addr, Layer: *layer, AdminAddr: *adminAddr, NoServerTiming: !*serverTiming, TransactionPooling: *pooling, OTel: *otel, Log: log}
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "nethttp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg chatserver.Config) error {
	return chatserver.Run(ctx, cfg, routes)
}

// routes mounts the application's public routes on http.ServeMux, with
// middleware.DB around the whole mux: every request gets a scope, which
// costs nothing to those that never touch the database. chatserver.Run
// serves /metrics and /debug/dbstats, on the admin listener where there
// is one.
func routes(a *chatserver.App) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", chat.ServePage)
	mux.HandleFunc("GET /api/messages", a.ListMessages)
	mux.Handle("POST /api/messages", a.Atomic(http.HandlerFunc(a.CreateMessage)))
	mux.Handle("GET /ws/sync", a.SyncWS)
	mux.Handle("GET /ws/async", a.AsyncWS)
	mux.HandleFunc("GET /readyz", a.Ready)
	// Each request's tenant, and each socket's (a real service takes it
	// from the signed-in user, after authentication), outside the scope:
	// statements read their settings from their own context, wherever it
	// was declared.
	return a.Tenant(middleware.DBWithOpts(a.Pool, &middleware.DBOptions{ServerTiming: a.ServerTiming})(mux))
}
