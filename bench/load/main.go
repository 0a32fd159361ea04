// Command load drives a bench/server with request/response load and prints
// one JSON line of results:
//
//	go run ./bench/load -url http://127.0.0.1:8090 -clients 8 -messages 5000 \
//		-app bench-sync -server-pid $PID
//
// Fields: msgs_per_s, p50_us/p99_us, error_replies, busy (1013 or 503),
// broken_sockets, wrong_replies, wrong_tenants (-tenants N: replies not of
// the client's tenant), peak_db_conns (the server's connections in
// pg_stat_activity, found by -app), server_peak_rss_bytes (VmHWM of
// -server-pid), pool_resets and resets_per_1k_msgs (the session resets the
// server's pool ran meanwhile, from its /debug/dbstats; dbscope modes). With -kill-every the server's backends are terminated at
// that interval while clients run. The database watched is $DATABASE_URL,
// else the local server at 127.0.0.1:5432: the one the server uses.
//
// With -members, it drives the room workload instead (/ws/room/{name},
// or /ws/fanout/{name} with -endpoint fanout): that many sockets spread
// over the instances in -urls (comma-separated; default -url) join the
// room (16 dials at a time), -senders of them send -messages each,
// closed-loop, and it prints deliveries_per_s, p50_us/p99_us from the send
// to each delivery, lost and duplicated, the instances' CPU per delivery
// and RSS per member at rest (-server-pids), the client's own, and how
// busy the machine was (see loadgen.RoomResult):
//
//	go run ./bench/load -members 1000 -senders 4 -messages 200 \
//		-urls http://127.0.0.1:8090,http://127.0.0.1:8091
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/internal/pgserver"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

func main() {
	var cfg loadgen.Config
	flag.StringVar(&cfg.URL, "url", "http://127.0.0.1:8090", "the server's base URL")
	flag.StringVar(&cfg.Proto, "proto", "ws", "ws (/ws/items) or http (GET /items/{id})")
	flag.IntVar(&cfg.Clients, "clients", 4, "concurrent clients")
	flag.IntVar(&cfg.Messages, "messages", 1000, "messages (requests) per client")
	flag.DurationVar(&cfg.Duration, "duration", 0, "stop every client after this long (0: when its messages are sent)")
	flag.DurationVar(&cfg.SampleEvery, "sample-every", 20*time.Millisecond, "interval of the pg_stat_activity samples")
	flag.IntVar(&cfg.Idle, "idle", 0, "extra idle websockets held open during the run")
	flag.DurationVar(&cfg.KillEvery, "kill-every", 0, "terminate the server's backends at this interval (0: never)")
	flag.StringVar(&cfg.App, "app", "", "application_name of the server's connections (for peak_db_conns and -kill-every)")
	flag.IntVar(&cfg.ServerPID, "server-pid", 0, "the server's pid, for its peak RSS")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "per-message timeout")
	flag.StringVar(&cfg.Label, "label", "", "name of the run in the output")
	flag.IntVar(&cfg.Tenants, "tenants", 0, "the tenant workload (server -tenant): client c is tenant t<c%N+1>, every reply's tenant is checked (wrong_tenants)")
	flag.BoolVar(&cfg.Write, "write", false, "the write workload (server -write): HTTP requests are POSTs, every reply must carry a row id")
	wait := flag.Duration("wait", 30*time.Second, "how long to wait for the server to answer")
	var room loadgen.RoomConfig
	flag.IntVar(&room.Members, "members", 0, "room workload: sockets in the room (0: the item workload)")
	flag.IntVar(&room.Senders, "senders", 4, "room workload: members that send, closed-loop")
	flag.StringVar(&room.Endpoint, "endpoint", "room", "room workload: room (with the lookup) or fanout")
	flag.StringVar(&room.Room, "room", "bench", "room workload: the room's name")
	flag.DurationVar(&room.Rest, "rest", time.Second, "room workload: how long the members rest once joined, before the instances' memory is read")
	urls := flag.String("urls", "", "room workload: the instances' base URLs, comma-separated (default -url)")
	pids := flag.String("server-pids", "", "room workload: the instances' process ids, comma-separated (for server_cpu_us_per_delivery)")
	apps := flag.String("apps", "", "room workload: the application_name of each instance's connections, comma-separated (for peak_db_conns)")
	cpuProfile := flag.String("cpuprofile", "", "write a CPU profile of the client to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if room.Members > 0 {
		room.URLs = []string{cfg.URL}
		if *urls != "" {
			room.URLs = strings.Split(*urls, ",")
		}
		if *apps != "" {
			room.Apps = strings.Split(*apps, ",")
		}
		for _, p := range strings.Split(*pids, ",") {
			if n, err := strconv.Atoi(p); err == nil {
				room.ServerPIDs = append(room.ServerPIDs, n)
			}
		}
		room.Messages, room.Label, room.SampleEvery = cfg.Messages, cfg.Label, cfg.SampleEvery
		if err := runRoom(ctx, room, *wait); err != nil {
			fmt.Fprintln(os.Stderr, "load:", err)
			pprof.StopCPUProfile()
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, cfg, *wait); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

func runRoom(ctx context.Context, cfg loadgen.RoomConfig, wait time.Duration) error {
	if len(cfg.Apps) > 0 {
		db, err := adminDB()
		if err != nil {
			return err
		}
		defer db.Close()
		cfg.Admin = db
	}
	for _, u := range cfg.URLs {
		if err := loadgen.WaitReady(ctx, u, wait); err != nil {
			return err
		}
	}
	res, err := loadgen.RunRoom(ctx, cfg)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func run(ctx context.Context, cfg loadgen.Config, wait time.Duration) error {
	if cfg.App != "" {
		db, err := adminDB()
		if err != nil {
			return err
		}
		defer db.Close()
		cfg.Admin = db
	}
	if err := loadgen.WaitReady(ctx, cfg.URL, wait); err != nil {
		return err
	}
	if cfg.ServerPID == 0 {
		// The server is another process whose pid we were not given:
		// this process's memory would say nothing about it.
		cfg.ServerPID = -1
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// adminDB opens the connections that watch the server's in
// pg_stat_activity (and terminate them, for -kill-every).
func adminDB() (*sql.DB, error) {
	url := os.Getenv("DATABASE_URL")
	if url == "" {
		url = pgserver.LocalURL
	}
	url, err := pgserver.WithParams(url, "application_name", "dbscope-bench-load")
	if err != nil {
		return nil, err
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(2)
	return db, nil
}
