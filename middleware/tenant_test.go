package middleware_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
)

var tenant = dbctx.NewSetting("app.tenant")

// auth declares the request's tenant, from a header here, as an
// authentication middleware would from a session.
func auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if t := r.Header.Get("X-Tenant"); t != "" {
			r = r.WithContext(tenant.With(r.Context(), t))
		}
		next.ServeHTTP(w, r)
	})
}

// seenHandler answers the tenant its two statements ran with.
func seenHandler(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var a, b string
	q := "SELECT coalesce(current_setting('app.tenant', true), '')"
	if err := dbctx.From(ctx).QueryRowContext(ctx, q).Scan(&a); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if err := dbctx.From(ctx).QueryRow(ctx, q).Scan(&b); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Fprintf(w, "%s %s", a, b)
}

// The tenant an authentication middleware declares is the one every
// statement of the request runs with, whether the middleware runs before
// middleware.DB or inside it, with middleware.Atomic or without; a
// request that declares none runs with none, on the same connection.
func TestRequestTenant(t *testing.T) {
	t.Parallel()
	// Behind the CI's PgBouncer, declared as one must.
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1, TransactionPooling: pgtest.Pooled()})
	h := http.HandlerFunc(seenHandler)
	for name, handler := range map[string]http.Handler{
		"auth outside DB":         auth(middleware.DB(p)(h)),
		"auth inside DB":          middleware.DB(p)(auth(h)),
		"auth inside DB, Atomic":  middleware.DB(p)(auth(middleware.Atomic(h))),
		"auth outside DB, Atomic": auth(middleware.DB(p)(middleware.Atomic(h))),
	} {
		srv := serve(t, handler)
		for _, tn := range []string{"t1", "", "t2", "t1", ""} {
			req, err := http.NewRequestWithContext(context.Background(), http.MethodGet, srv.URL, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Tenant", tn)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			var a, b string
			fmt.Fscan(resp.Body, &a, &b)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || a != tn || b != tn {
				t.Errorf("%s: a request of tenant %q: %d, its statements ran with %q and %q", name, tn, resp.StatusCode, a, b)
			}
		}
	}
	if st := p.Stats(); st.Resets != 0 {
		t.Errorf("%d resets: a request's tenant makes nothing dirty", st.Resets)
	}
}
