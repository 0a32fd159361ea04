package itemserver_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/bench/internal/itemserver"
	"github.com/dbscope/dbscope/bench/internal/loadgen"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// startCfg starts a server of cfg, over env's schema, with 2 slots.
func startCfg(ctx context.Context, t *testing.T, env *pgtest.Env, cfg itemserver.Config) *itemserver.Server {
	t.Helper()
	if cfg.DSN == "" {
		cfg.DSN = env.DSN()
	}
	cfg.App, cfg.MaxWorkers = env.AppName(), 2
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := itemserver.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return srv
}

// dbscopeMode reports whether mode serves through a dbctx.Pool.
func dbscopeMode(mode string) bool { return mode != "raw" && mode != "pgxpool" }

// checkTenantLoad runs the tenant workload on srv, 3 tenants over 6
// clients and the server's 2 connections, over websocket and HTTP, and
// fails t unless every message was answered, by its item, for its
// client's tenant; in the dbscope modes, with no session reset (under
// transaction pooling none is run anyway).
func checkTenantLoad(ctx context.Context, t *testing.T, srv *itemserver.Server, mode string, messages int) {
	t.Helper()
	for _, proto := range []string{"ws", "http"} {
		res, err := loadgen.Run(ctx, loadgen.Config{URL: srv.URL(), Proto: proto, Clients: 6, Messages: messages, Tenants: 3})
		if err != nil {
			t.Fatal(err)
		}
		if res.WrongTenants != 0 || res.Wrong != 0 || res.ErrorReplies != 0 || res.Broken != 0 || res.Busy != 0 || res.DialErrors != 0 ||
			res.Replies != int64(6*messages) {
			t.Errorf("%s: %d wrong tenants of %d replies: %+v", proto, res.WrongTenants, res.Replies, res)
		}
		switch {
		case !dbscopeMode(mode) && res.PoolResets != nil:
			t.Errorf("%s: resets reported for a server without a pool", proto)
		case dbscopeMode(mode) && (res.PoolResets == nil || *res.PoolResets != 0):
			t.Errorf("%s: resets %v for %d messages, want 0", proto, res.PoolResets, res.Replies)
		}
	}
	http.DefaultClient.CloseIdleConnections()
	if p := srv.Pool(); p != nil {
		if st := p.Stats(); st.Resets != 0 {
			t.Errorf("the pool ran %d resets: a tenant makes no scope dirty", st.Resets)
		}
	}
}

// TestTenant checks the tenant workload in every mode: the reply of each
// message carries the tenant of its socket or request, as the statement
// saw it, over 2 connections that 3 tenants share, with no reset in the
// dbscope modes; the server runs as a role the policy binds, and a socket
// or request without a tenant is refused.
func TestTenant(t *testing.T) {
	for _, mode := range itemserver.Modes {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			env := pgtest.New(t)
			srv := startCfg(ctx, t, env, itemserver.Config{
				Mode: mode, Tenant: true, Tenants: 3, TransactionPooling: pgtest.Pooled(),
			})

			var super, bypass bool
			var user string
			if err := srv.DB().QueryRowContext(ctx,
				"SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user").Scan(&user, &super, &bypass); err != nil {
				t.Fatal(err)
			}
			if user != itemserver.TenantRole || super || bypass {
				t.Fatalf("the server runs as %s (superuser %v, bypassrls %v), want %s, neither", user, super, bypass, itemserver.TenantRole)
			}

			ws := "ws" + strings.TrimPrefix(srv.URL(), "http") + "/ws/items"
			for _, tn := range []string{"t2", "t1"} {
				c, _, err := websocket.Dial(ctx, ws+"?tenant="+tn, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Write(ctx, websocket.MessageText, []byte(`{"id":7}`)); err != nil {
					t.Fatal(err)
				}
				_, got, err := c.Read(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if want := `{"id":7,"name":"item-7","tenant":"` + tn + `"}`; string(got) != want {
					t.Errorf("ws: got %s, want %s", got, want)
				}
				c.Close(websocket.StatusNormalClosure, "")
			}
			_, resp, err := websocket.Dial(ctx, ws, nil)
			if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Errorf("a socket without a tenant: %v, want 400", err)
			}
			wantGETs(t, srv, []getCase{
				{"/items/3?tenant=t3", 200, `{"id":3,"name":"item-3","tenant":"t3"}`},
				{"/items/3?tenant=t9", 500, `{"id":3,"error":"` + noRows(mode) + `"}`}, // a tenant with no rows sees none
				{"/items/3", 400, `{"id":0,"error":"tenant: missing"}`},
			})

			checkTenantLoad(ctx, t, srv, mode, 100)

			// What the pool gives back to the *sql.DB carries no tenant.
			if !pgtest.Pooled() {
				var tn string
				var n int
				q := fmt.Sprintf("SELECT coalesce(current_setting('app.tenant', true), ''), (SELECT count(*) FROM %q.tenant_items)", env.Schema())
				if err := srv.DB().QueryRowContext(ctx, q).Scan(&tn, &n); err != nil || tn != "" || n != 0 {
					t.Errorf("the *sql.DB's next user sees tenant %q and %d items (%v), want none", tn, n, err)
				}
			}
		})
	}
}

// TestTenantBehindPgBouncer runs the tenant workload in every mode
// through a PgBouncer in transaction mode, in each of pgx's exec modes
// that work there, the dbscope modes with TransactionPooling: every reply
// is its tenant's.
func TestTenantBehindPgBouncer(t *testing.T) {
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{PoolSize: 2})
	env := pgtest.New(t)
	for _, exec := range []string{"exec", "simple_protocol", "cache_describe"} {
		for _, mode := range itemserver.Modes {
			t.Run(exec+"/"+mode, func(t *testing.T) {
				t.Parallel()
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				srv := startCfg(ctx, t, env, itemserver.Config{
					Mode: mode, DSN: b.DSN(env, "default_query_exec_mode", exec),
					Tenant: true, Tenants: 3, TransactionPooling: true,
				})
				checkTenantLoad(ctx, t, srv, mode, 30)
			})
		}
	}
}

// TestSetupConcurrent starts servers of both workloads at once on one
// schema: Setup makes the role, tables and rows once, and each server
// serves.
func TestSetupConcurrent(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env := pgtest.New(t)
	cfg := itemserver.Config{
		Mode: "sync", DSN: env.DSN(), App: env.AppName(), MaxWorkers: 1, Tenant: true, Tenants: 2, Write: true,
		TransactionPooling: pgtest.Pooled(), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	var wg sync.WaitGroup
	errs := make([]error, 4)
	srvs := make([]*itemserver.Server, 4)
	for i := range srvs {
		wg.Go(func() { srvs[i], errs[i] = itemserver.Start(ctx, cfg) })
	}
	wg.Wait()
	for i, srv := range srvs {
		if srv == nil {
			continue
		}
		defer srv.Shutdown(ctx)
		if errs[i] == nil {
			resp, err := http.Get(srv.URL() + "/items/9?tenant=t2")
			if err != nil {
				errs[i] = err
			} else {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := `{"id":9,"name":"item-9","tenant":"t2"}`; string(body) != want {
					errs[i] = fmt.Errorf("got %s, want %s", body, want)
				}
			}
		}
	}
	http.DefaultClient.CloseIdleConnections()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := env.Admin().QueryRowContext(ctx, fmt.Sprintf("SELECT count(*) FROM %q.tenant_items", env.Schema())).Scan(&n); err != nil || n != 2*itemserver.Rows {
		t.Fatalf("%d tenant items (%v), want %d", n, err, 2*itemserver.Rows)
	}
}
