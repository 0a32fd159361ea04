package itemserver_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// TestWrite checks the write workload in every mode, with and without a
// tenant: every message and POST inserts one row and is answered with its
// id (and, with a tenant, the row's tenant, which is the client's). With
// a tenant the dbscope modes run with PlainWrites: the tenant of every
// row stays the client's when a write owes DISCARD SEQUENCES alone.
func TestWrite(t *testing.T) {
	for _, mode := range itemserver.Modes {
		for _, tenants := range []int{0, 3} {
			t.Run(fmt.Sprintf("%s/tenants=%d", mode, tenants), func(t *testing.T) {
				t.Parallel()
				if tenants == 0 && pgtest.Pooled() && dbscopeMode(mode) {
					// An INSERT's sequence state is session state.
					t.Skip("the write workload without a tenant is not run through a pooler")
				}
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				env := pgtest.New(t)
				srv := startCfg(ctx, t, env, itemserver.Config{
					Mode: mode, Write: true, Tenant: tenants > 0, Tenants: tenants, TransactionPooling: pgtest.Pooled(),
					PlainWrites: tenants > 0,
				})
				const clients, messages = 4, 40
				for _, proto := range []string{"ws", "http"} {
					res, err := loadgen.Run(ctx, loadgen.Config{URL: srv.URL(), Proto: proto, Clients: clients, Messages: messages, Tenants: tenants, Write: true})
					if err != nil {
						t.Fatal(err)
					}
					if res.Wrong != 0 || res.WrongTenants != 0 || res.ErrorReplies != 0 || res.Broken != 0 || res.Busy != 0 ||
						res.Replies != clients*messages {
						t.Errorf("%s: %+v", proto, res)
					}
				}
				http.DefaultClient.CloseIdleConnections()
				var rows, ids, tenanted int
				err := env.Admin().QueryRowContext(ctx, fmt.Sprintf("SELECT count(*), count(DISTINCT id), count(*) FILTER (WHERE tenant <> '') FROM %q.writes", env.Schema())).
					Scan(&rows, &ids, &tenanted)
				want := 2 * clients * messages
				wantTenanted := 0
				if tenants > 0 {
					wantTenanted = want
				}
				if err != nil || rows != want || ids != want || tenanted != wantTenanted {
					t.Errorf("writes: %d rows, %d ids, %d with a tenant (%v); want %d, %d, %d", rows, ids, tenanted, err, want, want, wantTenanted)
				}
			})
		}
	}
}
