package wsconsumer_test

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
)

// A socket carries a scope of each pool (Options.Pools): a message uses
// both databases, in the sync style directly and in the async style
// through each pool's Do; between messages neither pool holds anything;
// a panic discards both connections.
func TestTwoPools(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p1, env := dbtest.NewPool(t, nil)
			p2 := dbtest.NewSecondPool(t, env, nil)
			currentDB := func(ctx context.Context, p *dbctx.Pool) (string, error) {
				var db string
				query := func(ctx context.Context, s *dbctx.Scope) error {
					return s.QueryRowContext(ctx, "SELECT current_database()").Scan(&db)
				}
				if name == "async" {
					return db, p.Do(ctx, query)
				}
				return db, query(ctx, p.From(ctx))
			}
			receive := func(ctx context.Context, s *wsconsumer.Session, m msg) error {
				a, err := currentDB(ctx, p1)
				if err != nil {
					return err
				}
				b, err := currentDB(ctx, p2)
				if err != nil {
					return err
				}
				if m.Op == "panic" {
					panic("boom")
				}
				return s.SendJSON(ctx, msg{ID: m.ID, Name: a + " " + b})
			}
			h := style(p1, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{Receive: receive}),
				&wsconsumer.Options{Logger: quiet(), Pools: []*dbctx.Pool{p2}})
			url := serve(t, h)
			c := dial(t, url)
			want := ""
			for i := range 3 {
				r := roundTrip(t, c, msg{ID: i})
				if r.Error != "" || (want != "" && r.Name != want) {
					t.Fatalf("message %d: %+v", i, r)
				}
				want = r.Name
				dbtest.Eventually(t, "both pools to hold nothing between messages", func() bool {
					s1, s2 := p1.Stats(), p2.Stats()
					return s1.Pinned+s1.InUse+s2.Pinned+s2.InUse == 0
				})
			}
			var a, b string
			if n, _ := fmt.Sscan(want, &a, &b); n != 2 || a == b {
				t.Fatalf("reply %q: want two different databases", want)
			}
			send(t, c, msg{ID: 9, Op: "panic"})
			if _, code := recv(t, c); code != websocket.StatusInternalError {
				t.Fatalf("after the panic: close %v, want 1011", code)
			}
			if name == "sync" {
				for i, p := range []*dbctx.Pool{p1, p2} {
					if st := p.Stats(); st.Discarded.Panic != 1 {
						t.Errorf("pool %d: %d discarded for the panic, want 1", i+1, st.Discarded.Panic)
					}
				}
			}
		})
	}
}

// A socket carries none of the scopes middleware.DB put in its upgrade
// request, of any pool: its callbacks find the socket's own scope of the
// handler's pool, and none of another pool (before and after a slow
// message hands the socket over to its reader, which outlives the
// request's handler); and the request's scopes are ended at the upgrade,
// so that an idle socket holds no slot, Eager's included.
func TestRequestScopesNotInSocket(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			primary, env := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 3})
			replica := dbtest.NewSecondPool(t, env, nil)
			var requestScope atomic.Pointer[dbctx.Scope]
			seen := func(ctx context.Context) string {
				switch {
				case replica.From(ctx) != nil:
					return "the request's scope of another pool"
				case dbctx.From(ctx) == requestScope.Load():
					return "the request's scope of the handler's pool"
				}
				return "ok"
			}
			h := style(primary, wsconsumer.Consumer{
				Connect: func(ctx context.Context, s *wsconsumer.Session) error {
					if got := seen(ctx); got != "ok" {
						return fmt.Errorf("Connect found %s", got)
					}
					return nil
				},
				Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
					if string(data) == "slow" {
						time.Sleep(400 * time.Millisecond) // past the read-on delay: the reader takes over
					}
					return s.SendText(ctx, seen(ctx))
				},
			}, &wsconsumer.Options{Logger: quiet()})
			eager := middleware.DBWithOpts(primary, &middleware.DBOptions{Eager: true})
			record := func(next http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					requestScope.Store(dbctx.From(r.Context()))
					next.ServeHTTP(w, r)
				})
			}
			url := serve(t, middleware.DB(replica)(eager(record(h))))
			var cs []*websocket.Conn
			for range 3 { // as many as the primary's slots
				cs = append(cs, dial(t, url))
			}
			ctx := context.Background()
			for _, m := range []string{"a", "slow", "b"} {
				for _, c := range cs {
					if err := c.Write(ctx, websocket.MessageText, []byte(m)); err != nil {
						t.Fatal(err)
					}
					if got := readText(t, c); got != "ok" {
						t.Fatalf("after %q, a callback found %s", m, got)
					}
				}
			}
			dbtest.Eventually(t, "idle sockets to hold no slot", func() bool {
				return primary.Stats().InUse == 0 && replica.Stats().InUse == 0
			})
		})
	}
}
