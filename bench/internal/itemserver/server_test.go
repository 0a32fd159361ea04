package itemserver_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// start starts a server of mode with 2 slots over a schema of its own.
func start(ctx context.Context, t *testing.T, mode string) *itemserver.Server {
	t.Helper()
	env := pgtest.New(t)
	srv, err := itemserver.Start(ctx, itemserver.Config{
		Mode: mode, DSN: env.DSN(), App: env.AppName(), MaxWorkers: 2,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

// TestModes checks the workload in every mode: answers over websocket and
// HTTP, an error reply that keeps the socket open, a graceful shutdown.
func TestModes(t *testing.T) {
	for _, mode := range itemserver.Modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv := start(ctx, t, mode)

			c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL(), "http")+"/ws/items", nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct{ send, want string }{
				{`{"id":7}`, `{"id":7,"name":"item-7"}`},
				{`{"id":0}`, `{"id":0,"error":"` + noRows(mode) + `"}`},
				{`{"id":10000}`, `{"id":10000,"name":"item-10000"}`},
			} {
				if err := c.Write(ctx, websocket.MessageText, []byte(tc.send)); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("%s: %v", tc.send, err)
				}
				if string(got) != tc.want {
					t.Errorf("%s: got %s, want %s", tc.send, got, tc.want)
				}
			}

			wantGETs(t, srv, []getCase{
				{"/items/3", 200, `{"id":3,"name":"item-3"}`},
				{"/items/0", 500, `{"id":0,"error":"` + noRows(mode) + `"}`},
				{"/items/x", 400, `{"id":0,"error":"id: not a number"}`},
			})
			http.DefaultClient.CloseIdleConnections()

			// The client reads while the server closes: the closing
			// handshake needs its answer.
			closed := make(chan error, 1)
			go func() {
				_, _, err := c.Read(ctx)
				closed <- err
			}()
			if err := srv.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			err = <-closed
			if got := websocket.CloseStatus(err); got != websocket.StatusGoingAway {
				t.Errorf("after shutdown: %v, want close 1001", err)
			}
			c.CloseNow()
		})
	}
}

// TestTestOps checks that "sleep" holds the connection only when allowed.
func TestTestOps(t *testing.T) {
	env := pgtest.New(t)
	ctx := context.Background()
	srv, err := itemserver.Start(ctx, itemserver.Config{Mode: "sync", DSN: env.DSN(), TestOps: true})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(ctx)
	start := time.Now()
	resp, err := http.Get(srv.URL() + "/items/5?sleep=0.2")
	if err != nil {
		t.Fatal(err)
	}
	var m itemserver.Msg
	json.NewDecoder(resp.Body).Decode(&m)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if m.Name != "item-5" || time.Since(start) < 200*time.Millisecond {
		t.Errorf("got %+v after %v, want item-5 after 200ms", m, time.Since(start))
	}
}

// TestNoResets checks the cost promise of session isolation on the items
// workload: its one SELECT is classified clean, so 1,000 messages and
// 1,000 requests cost no reset round trip in any dbscope mode.
func TestNoResets(t *testing.T) {
	for _, mode := range itemserver.Modes {
		if mode == "raw" || mode == "pgxpool" {
			continue
		}
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			srv := start(ctx, t, mode)
			defer srv.Shutdown(ctx)
			c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL(), "http")+"/ws/items", nil)
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseNow()
			const n = 1000
			for i := range n {
				if err := c.Write(ctx, websocket.MessageText, []byte(fmt.Sprintf(`{"id":%d}`, i%100+1))); err != nil {
					t.Fatal(err)
				}
				if _, _, err := c.Read(ctx); err != nil {
					t.Fatal(err)
				}
				resp, err := http.Get(fmt.Sprintf("%s/items/%d", srv.URL(), i%100+1))
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET: %s", resp.Status)
				}
			}
			http.DefaultClient.CloseIdleConnections()
			c.Close(websocket.StatusNormalClosure, "")
			st := srv.Pool().Stats()
			if st.Resets != 0 || st.Acquired < 2*n {
				t.Fatalf("%d resets for %d messages and %d requests (%d connections pinned)", st.Resets, n, n, st.Acquired)
			}
		})
	}
}

// TestRooms runs the room workload in every mode, with each layer, and
// over two instances sharing PostgreSQL: every member gets every message
// once, looked up where asked.
func TestRooms(t *testing.T) {
	cases := []struct {
		mode, layer string
		instances   int
	}{
		{"raw", "", 1}, {"sync", "memory", 1}, {"async", "memory", 1},
		{"sync", "postgres", 1}, {"async", "postgres", 2}, {"sync", "postgres", 2},
		{"raw", "nats", 2}, {"sync", "nats", 2}, {"async", "nats", 2},
	}
	var nats *natstest.Server // one for every NATS case: each has rooms of its own
	for _, tc := range cases {
		if tc.layer == "nats" && nats == nil {
			nats = natstest.Start(t)
		}
		for _, endpoint := range []string{"room", "fanout"} {
			t.Run(fmt.Sprintf("%s/%s/%d/%s", tc.mode, tc.layer, tc.instances, endpoint), func(t *testing.T) {
				t.Parallel()
				env := pgtest.New(t)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				var urls []string
				cfg := itemserver.Config{
					Mode: tc.mode, Layer: tc.layer, DSN: env.DSN(), ListenDSN: env.DirectDSN(t), App: env.AppName(), MaxWorkers: 2,
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				}
				if tc.layer == "nats" {
					cfg.NATSURL = nats.URL
					cfg.RawNATS = tc.mode == "raw"
				}
				if tc.mode == "raw" {
					cfg.Layer = ""
				}
				for range tc.instances {
					srv, err := itemserver.Start(ctx, cfg)
					if err != nil {
						t.Fatal(err)
					}
					defer srv.Shutdown(ctx)
					urls = append(urls, srv.URL())
				}
				// Rooms of their own: the NATS cases share a server.
				room := strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())
				res, err := loadgen.RunRoom(ctx, loadgen.RoomConfig{URLs: urls, Endpoint: endpoint, Room: room, Members: 20, Senders: 2, Messages: 20})
				if err != nil {
					t.Fatal(err)
				}
				if res.Lost != 0 || res.Duplicated != 0 || res.Wrong != 0 || res.Broken != 0 || res.DialErrors != 0 ||
					res.Deliveries != 20*2*20 {
					t.Fatalf("%+v", res)
				}
			})
		}
	}
}

// getCase is a GET of path and the answer it must get.
type getCase struct {
	path   string
	status int
	want   string
}

// wantGETs fails t where a GET of srv is not answered as its case says.
func wantGETs(t *testing.T, srv *itemserver.Server, cases []getCase) {
	t.Helper()
	for _, tc := range cases {
		resp, err := http.Get(srv.URL() + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.status || string(body) != tc.want {
			t.Errorf("GET %s: %d %s, want %d %s", tc.path, resp.StatusCode, body, tc.status, tc.want)
		}
	}
}

// noRows is the error text of a missing item in mode: database/sql's, or
// pgx's own.
func noRows(mode string) string {
	if mode == "pgx" || mode == "pgxpool" {
		return "no rows in result set"
	}
	return "sql: no rows in result set"
}
