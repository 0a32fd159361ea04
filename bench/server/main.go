// Command server serves the benchmark workload "items" in one mode, for
// bench/load to drive:
//
//	go run ./bench/server -mode sync -addr 127.0.0.1:8090 -app bench-sync
//
// Endpoints: websocket /ws/items ({"id":k} → {"id":k,"name":"item-k"}),
// GET /items/{id}, GET /debug/dbstats (the pool's dbctx.Stats, in the
// dbscope modes), and the rooms: websocket /ws/room/{name} (the socket
// joins group name; each frame {"id":k,"seq":n} goes to the group, and
// every member looks item k up and sends {"id":k,"seq":n,"name":"item-k"})
// and /ws/fanout/{name} (the same without the lookup). Modes: raw (no
// dbscope; rooms in an in-process map), sync, async, atomic (sync
// consumers); -layer memory|postgres picks the rooms' engine. -tenant
// serves the items multi-tenant under row-level security (?tenant=T, the
// reply carries "tenant"), -write makes each message and POST
// /items/{id} insert a row (the reply carries its "row"). See package
// bench/internal/itemserver. It uses $DATABASE_URL; without it the local
// server at 127.0.0.1:5432, and without that a throwaway cluster it removes
// on exit. It creates the items table (10,000 rows) if missing, prints
// "listening on ADDR" once it serves, and stops gracefully on SIGINT or
// SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/internal/pgserver"
)

func main() {
	var cfg itemserver.Config
	flag.StringVar(&cfg.Mode, "mode", "sync", "raw, sync, async, atomic, pgx or pgxpool")
	flag.StringVar(&cfg.Addr, "addr", "127.0.0.1:8090", "listen address")
	flag.StringVar(&cfg.App, "app", "dbscope-bench-server", "application_name of the server's database connections")
	flag.IntVar(&cfg.MaxWorkers, "max-workers", 0, "worker slots and max open connections (default: $DBCTX_MAX_WORKERS, else min(32, NumCPU+4))")
	flag.DurationVar(&cfg.WaitTimeout, "wait-timeout", 0, "how long a caller waits for a slot (default 2s)")
	flag.StringVar(&cfg.Layer, "layer", "memory", "groups engine of /ws/room and /ws/fanout in the dbscope modes: memory, postgres or nats")
	flag.StringVar(&cfg.ListenDSN, "listen-dsn", "", "the postgres layer's listener connection (default: the database's)")
	flag.BoolVar(&cfg.RawNATS, "nats", false, "raw mode: carry the rooms between instances over NATS (a subscription per room)")
	flag.StringVar(&cfg.NATSURL, "nats-url", "", "the NATS server of -nats and -layer nats (default nats://127.0.0.1:4222)")
	flag.BoolVar(&cfg.TestOps, "test-ops", false, `honor "sleep" in messages (?sleep= in HTTP): for fault tests`)
	flag.BoolVar(&cfg.Tenant, "tenant", false, "the tenant workload: /ws/items?tenant=T and /items/{id}?tenant=T look up tenant_items under row-level security as the role "+itemserver.TenantRole)
	flag.IntVar(&cfg.Tenants, "tenants", itemserver.DefaultTenants, "with -tenant: tenants t1..tN that have rows")
	flag.BoolVar(&cfg.Write, "write", false, "the write workload: each /ws/items frame and POST /items/{id} inserts a row")
	flag.BoolVar(&cfg.PlainWrites, "plain-writes", false, "dbscope modes: dbctx.Options.PlainWrites (a write owes DISCARD SEQUENCES alone)")
	flag.BoolVar(&cfg.TransactionPooling, "transaction-pooling", false, "dbscope's TransactionPooling: the database is behind PgBouncer in transaction mode")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "server:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "server:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg itemserver.Config) error {
	url, stopCluster, err := pgserver.Start(ctx, nil)
	if err != nil {
		return err
	}
	defer stopCluster()
	cfg.DSN = url
	srv, err := itemserver.Start(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("listening on %s (mode %s, %d slots)\n", srv.Addr(), cfg.Mode, srv.MaxWorkers())
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
