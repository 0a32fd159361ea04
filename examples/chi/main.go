// Command chi is a chat room whose state lives in PostgreSQL, served with
// the chi router and chi's own middleware around dbscope's: a page, a JSON
// API and two websocket endpoints, one per wsconsumer style.
// examples/nethttp is the same application on http.ServeMux; the
// application itself, whose handlers and consumers show dbscope at work,
// is examples/internal/chatserver.
//
//	go run ./examples/chi            # http://127.0.0.1:8080
//	go run ./examples/chi -addr :9000
//	go run ./examples/chi -layer nats://127.0.0.1:4222   # rooms over NATS
//	go run ./examples/chi -admin-addr 127.0.0.1:9090 -server-timing=false   # as in production
//	go run ./examples/chi -otel   # OpenTelemetry: traces and metrics as JSON on stdout
//	OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 go run ./examples/chi -otel   # to a collector
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
	"github.com/go-chi/chi/v5"
	chimw "github.com/go-chi/chi/v5/middleware"
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
		fmt.Fprintln(os.Stderr, "chi:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg chatserver.Config) error {
	return chatserver.Run(ctx, cfg, routes)
}

// routes mounts the application's public routes on chi, which mounts
// dbscope's middleware like any func(http.Handler) http.Handler.
// chatserver.Run serves /metrics and /debug/dbstats, on the admin
// listener where there is one.
func routes(a *chatserver.App) http.Handler {
	// The records of a failed request, and of a socket, carry chi's
	// request ID and client, which chi's middleware put in the context.
	a.LogAttrs = func(ctx context.Context) []slog.Attr {
		return []slog.Attr{slog.String("request_id", chimw.GetReqID(ctx)), slog.String("client", chimw.GetClientIP(ctx))}
	}
	router := chi.NewRouter()
	// chi's middleware goes outside ours: Recoverer then sees a panic
	// after middleware.DB has discarded the request's connection.
	// ClientIPFromRemoteAddr replaces RealIP, deprecated since chi v5.5 as
	// spoofable; behind a proxy use ClientIPFromXFFTrustedProxies.
	router.Use(chimw.RequestID, chimw.ClientIPFromRemoteAddr, chimw.Recoverer)
	router.Use(middleware.DBWithOpts(a.Pool, &middleware.DBOptions{ServerTiming: a.ServerTiming}))
	// Each request's tenant, and each socket's (a real service takes it
	// from the signed-in user, after authentication).
	router.Use(a.Tenant)
	router.Get("/", chat.ServePage)
	router.Get("/api/messages", a.ListMessages)
	router.With(a.Atomic).Post("/api/messages", a.CreateMessage)
	router.Method(http.MethodGet, "/ws/sync", a.SyncWS)
	router.Method(http.MethodGet, "/ws/async", a.AsyncWS)
	router.Get("/readyz", a.Ready)
	return router
}
