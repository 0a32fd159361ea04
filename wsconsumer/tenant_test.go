package wsconsumer_test

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

var tenant = dbctx.NewSetting("app.tenant")

// tenantConsumer declares, in Connect, the tenant the URL names (?t=) for
// the socket's life, joins group g, and answers: "seen" with the tenant
// its statement ran with; "fan" with the tenants the statements of 8
// goroutines of the callback ran with (sync: on the socket's scope;
// async: each through Do); each event with "event <tenant>" as the
// event's statement saw it.
func tenantConsumer(style string) wsconsumer.Consumer {
	query := func(ctx context.Context) (string, error) {
		var v string
		err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRowContext(ctx, "SELECT coalesce(current_setting('app.tenant', true), '')").Scan(&v)
		})
		return v, err
	}
	return wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			s.State = style
			t := s.Request().URL.Query().Get("t")
			s.AddValues(func(ctx context.Context) context.Context { return tenant.With(ctx, t) })
			s.Go(func(ctx context.Context) { s.Join(ctx, "g") })
			return nil
		},
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			switch string(data) {
			case "seen":
				v, err := query(ctx)
				if err != nil {
					return err
				}
				return s.SendText(ctx, v)
			case "fan":
				var wg sync.WaitGroup
				got := make([]string, 8)
				errs := make([]error, 8)
				for i := range got {
					wg.Go(func() {
						if s.State == "async" {
							got[i], errs[i] = query(ctx)
							return
						}
						errs[i] = dbctx.From(ctx).QueryRowContext(ctx, "SELECT coalesce(current_setting('app.tenant', true), '')").Scan(&got[i])
					})
				}
				wg.Wait()
				for _, err := range errs {
					if err != nil {
						return err
					}
				}
				return s.SendText(ctx, strings.Join(got, " "))
			}
			return nil
		},
		Event: func(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
			if e.Gap {
				return nil
			}
			v, err := query(ctx)
			if err != nil {
				return err
			}
			return s.SendText(ctx, "event "+v)
		},
	}
}

// The tenant a socket declares in Connect is the one every statement of
// its callbacks runs with, in both styles: its messages, the goroutines a
// callback starts, its group events; two sockets of two tenants on one
// connection each see their own.
func TestSocketTenant(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			// Behind the CI's PgBouncer, declared as one must.
			p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1, TransactionPooling: pgtest.Pooled()})
			layer := memoryLayer(t)
			url := serve(t, style(p, tenantConsumer(name), &wsconsumer.Options{Layer: layer, Logger: quiet()}))
			a, b := dial(t, url+"?t=a"), dial(t, url+"?t=b")
			for range 3 {
				for c, want := range map[*websocket.Conn]string{a: "a", b: "b"} {
					if err := c.Write(context.Background(), websocket.MessageText, []byte("seen")); err != nil {
						t.Fatal(err)
					}
					if got := readText(t, c); got != want {
						t.Fatalf("a message of tenant %s ran with %q", want, got)
					}
					if err := c.Write(context.Background(), websocket.MessageText, []byte("fan")); err != nil {
						t.Fatal(err)
					}
					if got, all := readText(t, c), strings.TrimSpace(strings.Repeat(want+" ", 8)); got != all {
						t.Fatalf("the goroutines of a message of tenant %s ran with %q", want, got)
					}
				}
			}
			dbtest.Eventually(t, "both sockets in the group", func() bool { return layer.Stats().Members == 2 })
			if err := layer.Send(context.Background(), "g", []byte("x")); err != nil {
				t.Fatal(err)
			}
			got := map[string]bool{readText(t, a): true, readText(t, b): true}
			if !got["event a"] || !got["event b"] {
				t.Fatalf("the events ran with %v, want each socket's tenant", got)
			}
			if st := p.Stats(); st.Resets != 0 {
				t.Errorf("%d resets: a socket's tenant makes nothing dirty", st.Resets)
			}
		})
	}
}
