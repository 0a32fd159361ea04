package loadgen

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// RoomConfig describes a run of the room workload (itemserver's
// /ws/room/{name} and /ws/fanout/{name}). Zero values are defaults.
type RoomConfig struct {
	// URLs are the base URLs of the instances; members are spread over
	// them in turn. At least one.
	URLs []string

	// Endpoint is "room" (every delivery looks the item up; the default)
	// or "fanout" (no lookup).
	Endpoint string

	// Room names the group. Default: "bench".
	Room string

	// Members is the number of sockets in the room, Senders of which (the
	// first, on every instance in turn) send: closed-loop, each sends its
	// next message once its own has come back to it. Defaults: 100, 4.
	Members int
	Senders int

	// Messages per sender. Default: 200.
	Messages int

	// Timeout is how long a sender waits for its message to come back
	// before it counts it as lost and sends the next. Default: 10s.
	Timeout time.Duration

	// Label names the run in the result.
	Label string

	// Admin, with Apps (the application_name of each instance's
	// connections), samples pg_stat_activity every SampleEvery (default
	// 20ms) for PeakDBConns.
	Admin       *sql.DB
	Apps        []string
	SampleEvery time.Duration

	// ServerPIDs, the instances' process ids, give ServerCPUPerDelivery
	// and ServerRSSPerMember.
	ServerPIDs []int

	// Rest is how long the members stay idle once all have joined, before
	// the servers' resident memory is read and the senders start.
	// Default: 1s.
	Rest time.Duration
}

// RoomResult is what a room run measured, printed as one JSON line.
type RoomResult struct {
	Label     string `json:"label,omitempty"`
	Endpoint  string `json:"endpoint"`
	Instances int    `json:"instances"`
	Members   int    `json:"members"`
	Senders   int    `json:"senders"`
	Messages  int    `json:"messages_per_sender"`

	Sent          int64   `json:"sent"`
	Deliveries    int64   `json:"deliveries"` // frames members got, duplicates included
	Seconds       float64 `json:"seconds"`
	DeliveriesPS  float64 `json:"deliveries_per_s"`
	P50Micros     int64   `json:"p50_us"` // from the send to each delivery
	P99Micros     int64   `json:"p99_us"`
	MaxMicros     int64   `json:"max_us"`
	Lost          int64   `json:"lost"`       // deliveries expected and never made
	Duplicated    int64   `json:"duplicated"` // deliveries made twice or more
	Wrong         int64   `json:"wrong"`      // a name that is not item-<id>, or a frame not ours
	Broken        int64   `json:"broken_sockets"`
	DialErrors    int64   `json:"dial_errors"`
	SenderTimeout int64   `json:"sender_timeouts"`
	PeakDBConns   int64   `json:"peak_db_conns"` // of one instance, the most seen (with Admin and Apps)
	// ServerCPUPerDelivery is the instances' CPU time (user and system,
	// all their threads, summed) while the senders ran, over deliveries,
	// in µs (with ServerPIDs).
	ServerCPUPerDelivery float64 `json:"server_cpu_us_per_delivery,omitempty"`
	// ServerRSSPerMember is what the instances' resident memory (VmRSS,
	// summed) grew by from before the first dial to the members at rest
	// (joined, Rest later), per member, in bytes (with ServerPIDs):
	// sockets, consumers and the layer's members, and the garbage of
	// connecting that the Go runtime has not given back.
	ServerRSSPerMember float64 `json:"server_rss_per_member_bytes,omitempty"`
	// ClientRSSPerMember is the same for this process (the load client's
	// cost of a socket).
	ClientRSSPerMember float64 `json:"client_rss_per_member_bytes"`
	// ClientCPUPerDelivery is this process's CPU time while the senders
	// ran, over deliveries, in µs; ClientCPUShare is that time over the
	// instances' and its own: on a machine the client shares with the
	// servers, the part of the cores that receiving took.
	ClientCPUPerDelivery float64 `json:"client_cpu_us_per_delivery"`
	ClientCPUShare       float64 `json:"client_cpu_share,omitempty"`
	// MachineBusy is the share of all cores' time not idle while the
	// senders ran (/proc/stat): near 1, the run was bound by CPU.
	MachineBusy float64 `json:"machine_busy"`
	// LoadAvg is the machine's 1-minute load average when the run began.
	LoadAvg     float64  `json:"loadavg"`
	FirstErrors []string `json:"first_errors,omitempty"`
}

type roomMsg struct {
	ID   int    `json:"id"`
	Seq  int64  `json:"seq"`
	Name string `json:"name,omitempty"`
}

// RunRoom runs the room workload: every member joins, then the senders
// send; each member records every frame it gets, and the run ends once
// every sender has had its messages come back (or timed out), and the
// members have had time to get the last ones.
func RunRoom(ctx context.Context, cfg RoomConfig) (RoomResult, error) {
	if len(cfg.URLs) == 0 {
		return RoomResult{}, errors.New("loadgen: RunRoom needs at least one URL")
	}
	if cfg.Endpoint == "" {
		cfg.Endpoint = "room"
	}
	if cfg.Room == "" {
		cfg.Room = "bench"
	}
	if cfg.Members <= 0 {
		cfg.Members = 100
	}
	if cfg.Senders <= 0 {
		cfg.Senders = 4
	}
	cfg.Senders = min(cfg.Senders, cfg.Members)
	if cfg.Messages <= 0 {
		cfg.Messages = 200
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Rest <= 0 {
		cfg.Rest = time.Second
	}
	res := RoomResult{
		Label: cfg.Label, Endpoint: cfg.Endpoint, Instances: len(cfg.URLs),
		Members: cfg.Members, Senders: cfg.Senders, Messages: cfg.Messages,
		LoadAvg: loadAvg(),
	}
	total := int64(cfg.Senders * cfg.Messages)
	var (
		sentAt     = make([]atomic.Int64, total) // monotonic ns of each seq's send
		got        = make([][]uint8, cfg.Members)
		lats       = make([][]int64, cfg.Members) // each member's, merged at the end
		deliveries atomic.Int64
		wrong      atomic.Int64
		broken     atomic.Int64
		errMu      sync.Mutex
		errs       []string
	)
	note := func(err error) {
		errMu.Lock()
		if len(errs) < 5 {
			errs = append(errs, err.Error())
		}
		errMu.Unlock()
	}
	epoch := time.Now()
	now := func() int64 { return int64(time.Since(epoch)) }
	conns := make([]*websocket.Conn, cfg.Members)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	}()
	serverRSS0, clientRSS0 := serversRSS(cfg.ServerPIDs), vmRSS(os.Getpid())
	var next, dialErrors atomic.Int64
	var dialers sync.WaitGroup
	for range min(16, cfg.Members) {
		dialers.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= cfg.Members {
					return
				}
				url := "ws" + strings.TrimPrefix(cfg.URLs[i%len(cfg.URLs)], "http") + "/ws/" + cfg.Endpoint + "/" + cfg.Room
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				c, _, err := websocket.Dial(dctx, url, nil)
				if err == nil {
					_, _, err = c.Read(dctx) // {"joined":true}: the member is in
				}
				cancel()
				if err != nil {
					dialErrors.Add(1)
					note(err)
					if c != nil {
						c.CloseNow()
					}
					continue
				}
				c.SetReadLimit(1 << 20)
				conns[i] = c
				got[i] = make([]uint8, total)
			}
		})
	}
	dialers.Wait()
	res.DialErrors = dialErrors.Load()
	if joined := int64(cfg.Members) - res.DialErrors; joined > 0 {
		time.Sleep(cfg.Rest)
		if serverRSS0 > 0 && len(cfg.ServerPIDs) > 0 {
			res.ServerRSSPerMember = float64(serversRSS(cfg.ServerPIDs)-serverRSS0) / float64(joined)
		}
		res.ClientRSSPerMember = float64(vmRSS(os.Getpid())-clientRSS0) / float64(joined)
	}
	// own[s] receives the seqs sender s's socket gets of its own.
	own := make([]chan int64, cfg.Senders)
	for s := range own {
		own[s] = make(chan int64, 16)
	}
	senderOf := func(seq int64) int { return int(seq) / cfg.Messages }
	var readers sync.WaitGroup
	// The readers read without a context that can end (coder/websocket
	// then arms no timer per read, a tenth of the client's CPU with 10,000
	// members): they stop when their sockets are closed.
	var stopping atomic.Bool
	stopReading := func() {
		stopping.Store(true)
		for _, c := range conns {
			if c != nil {
				c.CloseNow()
			}
		}
	}
	for i, c := range conns {
		if c == nil {
			continue
		}
		readers.Go(func() {
			for {
				_, data, err := c.Read(context.Background())
				if err != nil {
					if !stopping.Load() {
						broken.Add(1)
						note(err)
					}
					return
				}
				at := now()
				var m roomMsg
				if json.Unmarshal(data, &m) != nil || m.Seq < 0 || m.Seq >= total {
					wrong.Add(1)
					continue
				}
				if cfg.Endpoint == "room" && m.Name != fmt.Sprint("item-", m.ID) {
					wrong.Add(1)
				}
				deliveries.Add(1)
				if got[i][m.Seq] < 255 {
					got[i][m.Seq]++
				}
				lats[i] = append(lats[i], at-sentAt[m.Seq].Load())
				if i < cfg.Senders && senderOf(m.Seq) == i {
					own[i] <- m.Seq
				}
			}
		})
	}
	stopSampling := sampleConns(ctx, cfg, &res.PeakDBConns)
	cpu0, self0 := serversCPU(cfg.ServerPIDs), cpuTicks(os.Getpid())
	busy0, all0 := machineTicks()
	start := time.Now()
	var senders sync.WaitGroup
	var sent, timeouts atomic.Int64
	for s := range cfg.Senders {
		c := conns[s]
		if c == nil {
			continue
		}
		senders.Go(func() {
			for k := range cfg.Messages {
				seq := int64(s*cfg.Messages + k)
				data, _ := json.Marshal(roomMsg{ID: int(seq)%10000 + 1, Seq: seq})
				sentAt[seq].Store(now())
				if err := c.Write(ctx, websocket.MessageText, data); err != nil {
					note(err)
					return
				}
				sent.Add(1)
				t := time.NewTimer(cfg.Timeout)
			wait:
				for {
					select {
					case back := <-own[s]:
						if back == seq {
							break wait
						}
					case <-t.C:
						timeouts.Add(1)
						break wait
					case <-ctx.Done():
						t.Stop()
						return
					}
				}
				t.Stop()
			}
		})
	}
	senders.Wait()
	// The last messages reach the members shortly after their senders.
	deadline := time.Now().Add(cfg.Timeout)
	expected := func() int64 {
		var n int64
		for i := range conns {
			if conns[i] != nil {
				n += sent.Load()
			}
		}
		return n
	}()
	for deliveries.Load() < expected && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	res.Seconds = time.Since(start).Seconds()
	cpu1, self1 := serversCPU(cfg.ServerPIDs), cpuTicks(os.Getpid())
	busy1, all1 := machineTicks()
	stopSampling()
	stopReading()
	readers.Wait()

	res.Sent = sent.Load()
	res.Deliveries = deliveries.Load()
	res.DeliveriesPS = float64(res.Deliveries) / res.Seconds
	if cpu0 >= 0 && cpu1 >= 0 && res.Deliveries > 0 && len(cfg.ServerPIDs) > 0 {
		res.ServerCPUPerDelivery = float64(cpu1-cpu0) * 1e6 / clockTicks / float64(res.Deliveries)
		if own := self1 - self0; own+cpu1-cpu0 > 0 {
			res.ClientCPUShare = float64(own) / float64(own+cpu1-cpu0)
		}
	}
	if res.Deliveries > 0 && self0 >= 0 && self1 >= 0 {
		res.ClientCPUPerDelivery = float64(self1-self0) * 1e6 / clockTicks / float64(res.Deliveries)
	}
	if all1 > all0 {
		res.MachineBusy = float64(busy1-busy0) / float64(all1-all0)
	}
	for i := range conns {
		if conns[i] == nil {
			continue
		}
		for seq := range total {
			if sentAt[seq].Load() == 0 {
				continue // never sent
			}
			switch n := got[i][seq]; {
			case n == 0:
				res.Lost++
			case n > 1:
				res.Duplicated += int64(n - 1)
			}
		}
	}
	res.Wrong = wrong.Load()
	res.Broken = broken.Load()
	res.SenderTimeout = timeouts.Load()
	sorted := slices.Concat(lats...)
	slices.Sort(sorted)
	if n := len(sorted); n > 0 {
		res.P50Micros = sorted[n/2] / 1e3
		res.P99Micros = sorted[n*99/100] / 1e3
		res.MaxMicros = sorted[n-1] / 1e3
	}
	res.FirstErrors = errs
	return res, nil
}

// sampleConns polls pg_stat_activity for the connections of each of
// cfg.Apps and keeps the most one instance had in *peak, until the
// returned function is called. Without cfg.Admin it does nothing.
func sampleConns(ctx context.Context, cfg RoomConfig, peak *int64) (stop func()) {
	if cfg.Admin == nil || len(cfg.Apps) == 0 {
		return func() {}
	}
	every := cfg.SampleEvery
	if every <= 0 {
		every = 20 * time.Millisecond
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			if n, err := connsOf(ctx, cfg.Admin, cfg.Apps); err == nil {
				*peak = max(*peak, n)
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

// serversCPU is the CPU time of every process of pids, in clock ticks, or
// -1 if one cannot be read.
func serversCPU(pids []int) int64 {
	var n int64
	for _, pid := range pids {
		t := cpuTicks(pid)
		if t < 0 {
			return -1
		}
		n += t
	}
	return n
}

// serversRSS is the resident memory of every process of pids, summed,
// in bytes, or 0 if one cannot be read.
func serversRSS(pids []int) int64 {
	var n int64
	for _, pid := range pids {
		b := vmRSS(pid)
		if b == 0 {
			return 0
		}
		n += b
	}
	return n
}

// machineTicks returns the time all cores have spent busy and in all,
// in clock ticks, from /proc/stat (idle and iowait are not busy), or 0, 0.
func machineTicks() (busy, all int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0
	}
	for k, v := range f[1:] {
		var t int64
		fmt.Sscan(v, &t)
		all += t
		if k != 3 && k != 4 { // idle, iowait
			busy += t
		}
	}
	return busy, all
}

// loadAvg returns the machine's 1-minute load average, or 0.
func loadAvg() float64 {
	var l float64
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Sscan(string(b), &l)
	}
	return l
}

// connsOf returns the most connections in pg_stat_activity under one of
// the application_names apps.
func connsOf(ctx context.Context, admin *sql.DB, apps []string) (int64, error) {
	var n int64
	err := admin.QueryRowContext(ctx, `SELECT coalesce(max(n), 0) FROM (
		SELECT count(*) AS n FROM pg_stat_activity
		WHERE application_name = ANY($1) GROUP BY application_name) c`, apps).Scan(&n)
	return n, err
}
