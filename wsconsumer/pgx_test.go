package wsconsumer_test

import (
	"context"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/sqlcpgx"
	"github.com/dbscope/dbscope/wsconsumer"
)

// sqlc's pgx/v5 code in both consumer styles: sync on the socket's scope,
// async through dbctx.Do. Each message inserts an item and reads it back;
// backends killed between messages cost nothing, the rows are in
// PostgreSQL once each, and an idle socket holds nothing.
func TestSqlcPgx(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, env := dbtest.NewPool(t, nil)
			if _, err := env.Admin().Exec("SET search_path TO " + env.Schema() + "; " + sqlcpgx.Schema); err != nil {
				t.Fatal(err)
			}
			receive := func(ctx context.Context, s *wsconsumer.Session, m msg) error {
				var it sqlcpgx.Item
				work := func(ctx context.Context, sc *dbctx.Scope) error {
					q := sqlcpgx.New(sc)
					created, err := q.CreateItem(ctx, m.Name)
					if err != nil {
						return err
					}
					it, err = q.GetItem(ctx, created.ID)
					return err
				}
				// Do runs on the callback's scope in the sync style.
				err := dbctx.Do(ctx, work)
				if err != nil {
					return s.SendJSON(ctx, msg{ID: m.ID, Error: err.Error()})
				}
				return s.SendJSON(ctx, msg{ID: int(it.ID), Name: it.Name})
			}
			h := style(p, wsconsumer.JSON(wsconsumer.JSONConsumer[msg]{Receive: receive}), &wsconsumer.Options{Logger: quiet()})
			c := dial(t, serve(t, h))
			for i := range 5 {
				r := roundTrip(t, c, msg{ID: i, Name: name})
				if r.Error != "" || r.Name != name {
					t.Fatalf("message %d: %+v", i, r)
				}
				if i%2 == 0 {
					env.Terminate(t)
				}
			}
			var n int
			if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".items").Scan(&n); err != nil || n != 5 {
				t.Fatalf("%d rows (%v), want 5", n, err)
			}
			dbtest.Eventually(t, "the idle socket to hold nothing", func() bool {
				st := p.Stats()
				return st.InUse == 0 && st.Pinned == 0
			})
		})
	}
}
