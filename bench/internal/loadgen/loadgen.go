// Package loadgen drives an item server (bench/internal/itemserver) with
// request/response load: N clients each sending M websocket messages or
// HTTP requests in turn, extra idle sockets held open meanwhile, and
// optionally the server's database connections terminated periodically.
// It measures throughput, latency and failures, and what the server
// costs: the database connections it holds and its memory.
//
//	res, err := loadgen.Run(ctx, loadgen.Config{URL: srv.URL(), Clients: 4, Messages: 1000})
//
// bench/load is the command around it.
package loadgen

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one run. Zero values are defaults.
type Config struct {
	// URL is the server's base URL, http://host:port.
	URL string

	// Proto is "ws" (the default: /ws/items) or "http" (GET /items/{id}).
	Proto string

	// Clients is the number of concurrent clients (sockets or HTTP
	// connections), each sending Messages in turn. Defaults: 4 and 1000.
	Clients  int
	Messages int

	// Duration, when positive, stops every client after this long even
	// if it has messages left.
	Duration time.Duration

	// Idle is the number of extra websockets opened before the run (each
	// sends one message first) and held open, silent, until its end.
	Idle int

	// Sleep, in seconds, asks the server to hold each query's connection
	// that long (a test op the server must allow).
	Sleep float64

	// Tenants, when positive, drives the tenant workload of a server
	// started with itemserver.Config.Tenant: client c (its socket, its
	// requests) is tenant t<c%Tenants+1> (?tenant=), and every reply must
	// carry that tenant, or it counts in Result.WrongTenants.
	Tenants int

	// Write drives the write workload of a server started with
	// itemserver.Config.Write: websocket frames as usual, HTTP requests
	// as POST; every reply must carry the new row's id.
	Write bool

	// Timeout is how long one message may wait for its answer before the
	// client counts it as hung and drops its socket. Default: 30s.
	Timeout time.Duration

	// Admin is a database handle, on the server's PostgreSQL, used to
	// watch the server's connections (by App) in pg_stat_activity and to
	// terminate them. Nil disables both.
	Admin *sql.DB

	// App is the application_name of the server's connections.
	App string

	// KillEvery, when positive, terminates every backend of App at this
	// interval while clients run.
	KillEvery time.Duration

	// SampleEvery is the interval of the pg_stat_activity and memory
	// samples. Default: 10ms.
	SampleEvery time.Duration

	// ServerPID, when set, is the server's process id: its peak RSS
	// (VmHWM) is read from /proc at the end, and the CPU time it spent
	// while the clients ran. When zero the server is
	// taken to run in this process and the Go runtime's peak memory of
	// the process is reported instead.
	ServerPID int

	// Label names the run in the result.
	Label string
}

// Result is what a run measured, printed as one JSON line by bench/load.
type Result struct {
	Label    string `json:"label,omitempty"`
	Proto    string `json:"proto"`
	Clients  int    `json:"clients"`
	Messages int    `json:"messages_per_client"`
	Idle     int    `json:"idle_sockets"`

	Replies   int64   `json:"replies"` // answers received, error replies included
	Seconds   float64 `json:"seconds"`
	MsgsPerS  float64 `json:"msgs_per_s"`
	P50Micros int64   `json:"p50_us"`
	P99Micros int64   `json:"p99_us"`
	MaxMicros int64   `json:"max_us"`

	ErrorReplies int64 `json:"error_replies"`  // {"error":…} or HTTP 500
	Busy         int64 `json:"busy"`           // close 1013 or HTTP 503
	Broken       int64 `json:"broken_sockets"` // other read failures, HTTP transport errors
	Hung         int64 `json:"hung"`           // no answer within Timeout (also counted as broken)
	Wrong        int64 `json:"wrong_replies"`  // an answer that is not item-<id> for the id sent (with Write: no row id)
	WrongTenants int64 `json:"wrong_tenants"`  // with Tenants: an answer of another tenant, or of none
	DialErrors   int64 `json:"dial_errors"`

	Tenants int  `json:"tenants,omitempty"`
	Write   bool `json:"write,omitempty"`

	// PoolResets is the number of session resets the server's pool ran
	// during the run, and ResetsPer1k that per 1,000 replies, from its
	// GET /debug/dbstats (dbctx's Stats.Resets) before and after; absent
	// where the server has no pool (raw, pgxpool).
	PoolResets  *int64   `json:"pool_resets,omitempty"`
	ResetsPer1k *float64 `json:"resets_per_1k_msgs,omitempty"`
	// SettingsPer1k is the round trips that carried set_config for the
	// declared settings (dbctx's Stats.Settings) per 1,000 replies: the
	// units that found no connection carrying their tenant.
	SettingsPer1k *float64 `json:"settings_per_1k_msgs,omitempty"`

	KillRounds    int64   `json:"kill_rounds"`
	Killed        int64   `json:"backends_killed"`
	KilledInUse   int64   `json:"backends_killed_in_use"` // running a statement or in a transaction when killed
	ErrorsPerKill float64 `json:"error_replies_per_kill,omitempty"`
	PeakDBConns   int64   `json:"peak_db_conns"`
	ServerPeakRSS int64   `json:"server_peak_rss_bytes,omitempty"`
	// ServerCPUPerMsg is the server's CPU time (user and system, all
	// threads) per reply while the clients ran, in µs: on a machine the
	// server shares with the driver and PostgreSQL, a steadier measure of
	// its cost than msgs/s, which moves with everything else running.
	ServerCPUPerMsg float64  `json:"server_cpu_us_per_msg,omitempty"`
	InProcessPeak   int64    `json:"inprocess_go_heap_stack_peak_bytes,omitempty"` // server and driver together
	FirstErrors     []string `json:"first_errors,omitempty"`
}

// Run runs the load described by cfg and returns what it measured. It
// returns an error only when the run could not start (idle sockets could
// not be opened, the server is not there); failures of messages are
// counted in the Result.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg = withDefaults(cfg)
	r := &run{cfg: cfg}
	r.res = Result{Label: cfg.Label, Proto: cfg.Proto, Clients: cfg.Clients, Messages: cfg.Messages, Idle: cfg.Idle,
		Tenants: cfg.Tenants, Write: cfg.Write}
	stats0, haveStats := poolStats(ctx, cfg.URL)

	stopSampling := r.sample(ctx)
	idle, err := openIdle(ctx, cfg, cfg.Idle)
	defer func() {
		for _, c := range idle {
			c.CloseNow()
		}
	}()
	if err != nil {
		stopSampling()
		return r.res, err
	}

	var stopKills func()
	if cfg.KillEvery > 0 && cfg.Admin != nil {
		stopKills = r.kill(ctx)
	}
	var drv driver
	if cfg.Proto == "http" {
		drv = newHTTPDriver(cfg)
	} else {
		drv = &wsDriver{cfg: cfg}
	}
	lat := make([][]time.Duration, cfg.Clients)
	cpu0 := cpuTicks(cfg.ServerPID)
	start := time.Now()
	cctx := ctx
	if cfg.Duration > 0 {
		var cancel context.CancelFunc
		cctx, cancel = context.WithDeadline(ctx, start.Add(cfg.Duration))
		defer cancel()
	}
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Go(func() { lat[i] = drv.client(ctx, cctx.Done(), r, i) })
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu := cpuTicks(cfg.ServerPID) - cpu0
	if stopKills != nil {
		stopKills()
	}
	drv.close()
	stopSampling()
	var settings *int64
	if stats1, ok := poolStats(ctx, cfg.URL); ok && haveStats {
		n, m := stats1.Resets-stats0.Resets, stats1.Settings-stats0.Settings
		r.res.PoolResets, settings = &n, &m
	}

	all := slices.Concat(lat...)
	slices.Sort(all)
	res := &r.res
	res.Replies = int64(len(all))
	res.Seconds = elapsed.Seconds()
	res.MsgsPerS = float64(len(all)) / elapsed.Seconds()
	if len(all) > 0 {
		res.P50Micros = all[len(all)/2].Microseconds()
		res.P99Micros = all[len(all)*99/100].Microseconds()
		res.MaxMicros = all[len(all)-1].Microseconds()
	}
	res.ErrorReplies = r.errorReplies.Load()
	res.Busy = r.busy.Load()
	res.Broken = r.broken.Load()
	res.Hung = r.hung.Load()
	res.Wrong = r.wrong.Load()
	res.WrongTenants = r.wrongTenants.Load()
	if res.PoolResets != nil && len(all) > 0 {
		per := float64(*res.PoolResets) * 1000 / float64(len(all))
		res.ResetsPer1k = &per
		sper := float64(*settings) * 1000 / float64(len(all))
		res.SettingsPer1k = &sper
	}
	res.DialErrors = r.dialErrors.Load()
	if res.Killed > 0 {
		res.ErrorsPerKill = float64(res.ErrorReplies) / float64(res.Killed)
	}
	if cfg.ServerPID > 0 {
		res.ServerPeakRSS = vmHWM(cfg.ServerPID)
		if cpu0 >= 0 && len(all) > 0 {
			res.ServerCPUPerMsg = float64(cpu) * 1e6 / clockTicks / float64(len(all))
		}
	}
	return *res, nil
}

func withDefaults(cfg Config) Config {
	if cfg.Proto == "" {
		cfg.Proto = "ws"
	}
	if cfg.Clients <= 0 {
		cfg.Clients = 4
	}
	if cfg.Messages <= 0 {
		cfg.Messages = 1000
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.SampleEvery <= 0 {
		cfg.SampleEvery = 10 * time.Millisecond
	}
	cfg.URL = strings.TrimSuffix(cfg.URL, "/")
	return cfg
}

// run is the shared state of one run.
type run struct {
	cfg Config
	res Result // written by the sampler and killer before Run reads it

	errorReplies, busy, broken, hung, wrong, wrongTenants, dialErrors atomic.Int64

	mu        sync.Mutex
	firstErrs []string
}

// note keeps the first few failures for the result.
func (r *run) note(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.firstErrs) < 5 {
		r.firstErrs = append(r.firstErrs, fmt.Sprintf(format, args...))
		r.res.FirstErrors = r.firstErrs
	}
}

// id is the item id of message i of client c: spread over the table.
func (r *run) id(c, i int) int { return (c*r.cfg.Messages+i)%10000 + 1 }

// tenant is client c's tenant with Config.Tenants, else "".
func (c *Config) tenant(client int) string {
	if c.Tenants <= 0 {
		return ""
	}
	return "t" + strconv.Itoa(client%c.Tenants+1)
}

// query is the query string of client c's URLs: its tenant, or "".
func (c *Config) query(client int) string {
	if t := c.tenant(client); t != "" {
		return "?tenant=" + t
	}
	return ""
}

// driver runs the clients of one protocol.
type driver interface {
	// client sends the client's messages in turn, until stop is closed,
	// and returns the latency of each answer.
	client(ctx context.Context, stop <-chan struct{}, r *run, c int) []time.Duration
	close()
}

// sample polls the server's database connections and, in-process, the
// runtime's memory, until the returned function is called.
func (r *run) sample(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.cfg.SampleEvery)
		defer t.Stop()
		var ms runtime.MemStats
		memEvery := max(1, int(100*time.Millisecond/r.cfg.SampleEvery))
		for i := 0; ; i++ {
			if r.cfg.Admin != nil && r.cfg.App != "" {
				if n, err := connsOf(ctx, r.cfg.Admin, []string{r.cfg.App}); err == nil {
					r.res.PeakDBConns = max(r.res.PeakDBConns, n)
				}
			}
			if r.cfg.ServerPID == 0 && i%memEvery == 0 {
				runtime.ReadMemStats(&ms)
				r.res.InProcessPeak = max(r.res.InProcessPeak, int64(ms.HeapInuse+ms.StackInuse))
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

// kill terminates the server's backends every KillEvery until the returned
// function is called.
func (r *run) kill(ctx context.Context) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.cfg.KillEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			var n, inUse int64
			err := r.cfg.Admin.QueryRowContext(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)),
				count(*) FILTER (WHERE state <> 'idle')
				FROM pg_stat_activity WHERE application_name = $1`, r.cfg.App).Scan(&n, &inUse)
			if err != nil {
				continue // ctx ended mid-kill
			}
			r.res.KillRounds++
			r.res.Killed += n
			r.res.KilledInUse += inUse
		}
	}()
	return func() { cancel(); <-done }
}

// clockTicks is USER_HZ, the unit of the CPU times in /proc/<pid>/stat:
// 100 on every Linux port that Go supports.
const clockTicks = 100

// cpuTicks returns the user and system CPU time process pid has used, in
// clock ticks, or -1.
func cpuTicks(pid int) int64 {
	if pid <= 0 {
		return -1
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after it. utime and stime are fields 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return -1
	}
	var utime, stime int64
	fmt.Sscan(f[11], &utime)
	fmt.Sscan(f[12], &stime)
	return utime + stime
}

// vmHWM returns the peak resident set size of process pid, or 0.
func vmHWM(pid int) int64 { return statusBytes(pid, "VmHWM:") }

// vmRSS returns the resident set size of process pid, or 0.
func vmRSS(pid int) int64 { return statusBytes(pid, "VmRSS:") }

// statusBytes returns the size in field (e.g. "VmRSS:") of process pid's
// /proc/<pid>/status, in bytes, or 0.
func statusBytes(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, field); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d kB", &kb)
			return kb << 10
		}
	}
	return 0
}

// poolCounts are the counters of the server's pool that a run reports.
type poolCounts struct{ Resets, Settings int64 }

// poolStats returns the counters of the server's pool, from its GET
// /debug/dbstats, and false where it has none (raw, pgxpool).
func poolStats(ctx context.Context, base string) (poolCounts, bool) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/debug/dbstats", nil)
	req.Close = true
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return poolCounts{}, false
	}
	defer resp.Body.Close()
	var st poolCounts
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return poolCounts{}, false
	}
	return st, true
}

// WaitReady polls the server's HTTP endpoint until it answers, for at
// most d. It looks item 1 up as tenant t1, which servers without tenants
// ignore.
func WaitReady(ctx context.Context, url string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", strings.TrimSuffix(url, "/")+"/items/1?tenant=t1", nil)
		req.Close = true // leave no keep-alive connection behind
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.Join(errors.New("loadgen: server not ready"), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
