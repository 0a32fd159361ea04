package wsconsumer_test

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
)

// callbackCounter is a consumer whose Connect queries (as an
// authentication lookup would) and whose callbacks count their runs.
type callbackCounter struct{ connects, disconnects atomic.Int64 }

func (cc *callbackCounter) consumer() wsconsumer.Consumer {
	return wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			cc.connects.Add(1)
			return dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
				var n int
				return sc.QueryRowContext(ctx, "SELECT 1").Scan(&n)
			})
		},
		Disconnect: func(context.Context, *wsconsumer.Session, websocket.StatusCode) { cc.disconnects.Add(1) },
	}
}

// No callback runs, and no slot is taken, for a request that is no
// websocket upgrade websocket.Accept takes: plain GETs (a cross-site
// <img src>), foreign origins (a cross-site page's websocket, which
// would carry the victim's cookies), malformed upgrades. Each is answered
// as Accept answers it, and counted; a foreign origin the options allow,
// and a same-origin upgrade, run Connect.
func TestNoCallbackBeforeUpgrade(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1})
			var cc callbackCounter
			h := style(p, cc.consumer(), &wsconsumer.Options{Logger: quiet(),
				Accept: &websocket.AcceptOptions{OriginPatterns: []string{"*.friend.example"}}})
			url := serve(t, h)
			httpURL := "http" + strings.TrimPrefix(url, "ws")
			upgrade := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket",
				"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
			with := func(kv ...string) map[string]string {
				m := map[string]string{}
				for k, v := range upgrade {
					m[k] = v
				}
				for i := 0; i < len(kv); i += 2 {
					m[kv[i]] = kv[i+1]
				}
				return m
			}
			cases := []struct {
				name   string
				method string
				header map[string]string
				want   int
			}{
				{"plain GET", "GET", nil, http.StatusUpgradeRequired},
				{"plain cross-site GET", "GET", map[string]string{"Origin": "https://evil.example", "Referer": "https://evil.example/"}, http.StatusUpgradeRequired},
				{"foreign origin", "GET", with("Origin", "https://evil.example"), http.StatusForbidden},
				{"foreign origin like a friend", "GET", with("Origin", "https://friend.example.evil.example"), http.StatusForbidden},
				{"origin null", "GET", with("Origin", "null"), http.StatusForbidden},
				{"POST upgrade", "POST", upgrade, http.StatusMethodNotAllowed},
				{"version 8", "GET", with("Sec-WebSocket-Version", "8"), http.StatusBadRequest},
				{"key of 4 bytes", "GET", with("Sec-WebSocket-Key", "AAAAAA=="), http.StatusBadRequest},
				{"no Upgrade header", "GET", with("Upgrade", ""), http.StatusUpgradeRequired},
			}
			// The one slot held: a request that took one would be refused 503.
			ctx, hold := p.Scope(context.Background())
			if err := hold.Reserve(ctx); err != nil {
				t.Fatal(err)
			}
			for _, tc := range cases {
				for range 20 {
					req, _ := http.NewRequest(tc.method, httpURL, nil)
					for k, v := range tc.header {
						req.Header.Set(k, v)
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						t.Fatal(err)
					}
					resp.Body.Close()
					if resp.StatusCode != tc.want {
						t.Fatalf("%s: %d, want %d", tc.name, resp.StatusCode, tc.want)
					}
				}
			}
			st := p.Stats()
			if n, m := cc.connects.Load(), cc.disconnects.Load(); n != 0 || m != 0 || st.Busy != 0 || st.WaitCount != 0 {
				t.Fatalf("%d refused upgrades: Connect ran %d times, Disconnect %d; the pool refused %d, queued %d",
					20*len(cases), n, m, st.Busy, st.WaitCount)
			}
			if got := h.Stats(); got.BadUpgrade != int64(20*len(cases)) || got.Accepted != 0 {
				t.Errorf("Stats %+v, want BadUpgrade %d", got, 20*len(cases))
			}
			hold.End()

			// Allowed: the request's own host, and a pattern's; one
			// socket at a time, as the one slot and no queue allow.
			for i, origin := range []string{"", "https://chat.friend.example"} {
				hdr := http.Header{}
				if origin != "" {
					hdr.Set("Origin", origin)
				}
				c, _, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: hdr})
				if err != nil {
					t.Fatalf("origin %q: %v", origin, err)
				}
				c.Close(websocket.StatusNormalClosure, "")
				dbtest.Eventually(t, "the socket disconnected, its slot free", func() bool {
					return cc.disconnects.Load() == int64(i+1) && p.Stats().InUse == 0
				})
			}
			if n := cc.connects.Load(); n != 2 || p.Stats().Acquired != 2 {
				t.Errorf("Connect ran %d times for 2 allowed upgrades (pool acquired %d)", n, p.Stats().Acquired)
			}
		})
	}
}

// Past MaxSockets an upgrade is answered 503 with Retry-After before any
// callback runs, and counted; once a socket goes, another is taken.
func TestMaxSockets(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	var cc callbackCounter
	h := wsconsumer.NewSync(p, cc.consumer(), &wsconsumer.Options{Logger: quiet(), MaxSockets: 2})
	url := serve(t, h)
	a, b := dial(t, url), dial(t, url)
	_, resp, err := websocket.Dial(context.Background(), url, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("a third socket: %v, %v; want 503 with Retry-After", err, resp)
	}
	if n, st := cc.connects.Load(), h.Stats(); n != 2 || st.Refused != 1 || st.Sockets != 2 {
		t.Fatalf("Connect ran %d times, Stats %+v; want 2, Refused 1, Sockets 2", n, st)
	}
	a.Close(websocket.StatusNormalClosure, "")
	dbtest.Eventually(t, "the socket gone", func() bool { return h.Stats().Sockets == 1 })
	dial(t, url)
	b.Close(websocket.StatusNormalClosure, "")
}

// An origin pattern that path.Match refuses panics at construction, where
// Accept would refuse every cross-origin upgrade with 403 at request time.
func TestBadOriginPatternPanics(t *testing.T) {
	defer func() {
		if r, _ := recover().(string); !strings.HasPrefix(r, "wsconsumer: ") {
			t.Errorf("panic %q, want one from wsconsumer", r)
		}
	}()
	wsconsumer.NewSync(nil, wsconsumer.Consumer{}, &wsconsumer.Options{
		Accept: &websocket.AcceptOptions{OriginPatterns: []string{"[example.org"}}})
}

// A websocket route under middleware.Atomic (ATOMIC_REQUESTS over the
// whole mux) cannot work: the socket would outlive the request's
// transaction, and Atomic's writer cannot hijack. It is refused before
// Connect runs, with 500 and an ERROR that says what to change, where
// Connect ran and the failed hijack was taken for a client gone; the
// ERROR once, however many upgrades come.
func TestSocketUnderAtomic(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _ := dbtest.NewPool(t, nil)
			logs, logger := dbtest.NewLogs()
			var cc callbackCounter
			h := style(p, cc.consumer(), &wsconsumer.Options{Logger: logger})
			url := serve(t, middleware.DB(p)(middleware.Atomic(h)))
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			// Each upgrade is refused and counted; the misconfiguration
			// is logged once (each was logged: a flood under load).
			for range 3 {
				_, resp, err := websocket.Dial(ctx, url, nil)
				if err == nil || resp == nil || resp.StatusCode != http.StatusInternalServerError {
					t.Fatalf("dial: %v, %v; want 500", err, resp)
				}
			}
			if n := cc.connects.Load() + cc.disconnects.Load(); n != 0 {
				t.Errorf("%d callbacks ran", n)
			}
			if st := h.Stats(); st.Failed != 3 || st.ClientGone != 0 {
				t.Errorf("Stats %+v, want Failed 3", st)
			}
			if n := logs.Count(slog.LevelError, "wsconsumer: websocket route inside a transaction"); n != 1 {
				t.Errorf("%d errors logged about it:\n%s", n, logs)
			}
		})
	}
}

// A handler without a pool, mounted without middleware.DB, refuses every
// upgrade with 500 and counts it as failed (it counted nothing), and says
// what to mount once, at ERROR (it did for every upgrade).
func TestNoPoolLoggedOnce(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			logs, logger := dbtest.NewLogs()
			var cc callbackCounter
			h := style(nil, cc.consumer(), &wsconsumer.Options{Logger: logger})
			url := serve(t, h)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			for range 3 {
				_, resp, err := websocket.Dial(ctx, url, nil)
				if err == nil || resp == nil || resp.StatusCode != http.StatusInternalServerError {
					t.Fatalf("dial: %v, %v; want 500", err, resp)
				}
			}
			if n := cc.connects.Load() + cc.disconnects.Load(); n != 0 {
				t.Errorf("%d callbacks ran", n)
			}
			if st := h.Stats(); st.Failed != 3 {
				t.Errorf("Stats %+v, want Failed 3", st)
			}
			if n := logs.Count(slog.LevelError, "wsconsumer: no pool"); n != 1 {
				t.Errorf("%d errors logged about it:\n%s", n, logs)
			}
		})
	}
}
