package itemserver

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"
	"strconv"
	"sync"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The tenant workload (Config.Tenant): the items of tenant_items, one set
// of Rows per tenant, under a row-level-security policy on app.tenant that
// binds their owner too (FORCE), read by TenantRole, a role without
// SUPERUSER or BYPASSRLS, either of which would bypass the policy. A
// socket of /ws/items?tenant=T, and a request of /items/{id}?tenant=T,
// runs its statements with app.tenant = T; a missing tenant is refused
// (400). Replies carry the tenant as the statement saw it:
// current_setting('app.tenant'), read by the lookup itself.
//
// The dbscope modes declare the tenant with the Setting API: in Connect
// for a socket's life (Session.AddValues), in an HTTP middleware for a
// request. The raw and pgxpool modes do what a hand-written server does:
// a transaction per message (BEGIN, set_config(…, true), the lookup,
// COMMIT: four round trips).

// TenantRole and TenantPassword are the login role the server connects
// as with Config.Tenant. Setup, as the DSN's user, creates the role where
// it is missing and sets its password and attributes (LOGIN, NOSUPERUSER,
// NOBYPASSRLS); the role may only read tenant_items and insert into
// writes. The password is a constant so that servers sharing a cluster
// agree on it.
const (
	TenantRole     = "dbscope_bench"
	TenantPassword = "dbscope-bench"
)

// DefaultTenants is how many tenants, t1 to tN, Setup gives rows by
// default (Config.Tenants).
const DefaultTenants = 16

func (c *Config) tenants() int {
	if c.Tenants <= 0 {
		return DefaultTenants
	}
	return c.Tenants
}

// tenantName returns the name of tenant k (1-based): t<k>, as bench/load
// names them.
func tenantName(k int) string { return "t" + strconv.Itoa(k) }

// tenant is the app.tenant setting of the dbscope modes, declared by the
// first server with Config.Tenant: a process that serves no tenant
// declares no setting, and so pays nothing for settings.
var (
	tenantOnce sync.Once
	tenant     dbctx.Setting
)

func tenantSetting() dbctx.Setting {
	tenantOnce.Do(func() { tenant = dbctx.NewSetting("app.tenant") })
	return tenant
}

// setupTenant is Setup's part for Config.Tenant, in schema: the role, the
// table and its policy, and the rows of tenants t1 to tN, each inserted
// with its app.tenant set, so that the policy admits them whoever owns
// the table.
func setupTenant(ctx context.Context, tx *sql.Tx, schema string, n int) error {
	role, sch := pgx.Identifier{TenantRole}.Sanitize(), pgx.Identifier{schema}.Sanitize()
	attrs := "LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD '" + TenantPassword + "'"
	for _, q := range []string{
		// Roles belong to the cluster, which servers on other databases
		// share, outside Setup's lock: one may create it meanwhile.
		`DO $$BEGIN
			IF EXISTS (SELECT FROM pg_roles WHERE rolname = '` + TenantRole + `') THEN
				ALTER ROLE ` + role + ` ` + attrs + `;
			ELSE
				BEGIN
					CREATE ROLE ` + role + ` ` + attrs + `;
				EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
				END;
			END IF;
		END$$`,
		"GRANT USAGE ON SCHEMA " + sch + " TO " + role,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	if err := createTable(ctx, tx, "tenant_items",
		"CREATE TABLE tenant_items (tenant text NOT NULL, id int NOT NULL, name text NOT NULL, PRIMARY KEY (tenant, id))",
		"ALTER TABLE tenant_items ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY",
		"CREATE POLICY tenant_rows ON tenant_items USING (tenant = current_setting('app.tenant', true))",
		"GRANT SELECT ON tenant_items TO "+role,
	); err != nil {
		return err
	}
	for k := 1; k <= n; k++ {
		t := tenantName(k)
		var have int
		if _, err := tx.ExecContext(ctx, "SELECT set_config('app.tenant', $1, true)", t); err != nil {
			return err
		}
		if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM tenant_items WHERE tenant = $1", t).Scan(&have); err != nil {
			return err
		}
		if have == Rows {
			continue
		}
		if _, err := tx.ExecContext(ctx, fmt.Sprintf(
			"INSERT INTO tenant_items SELECT $1, g, 'item-' || g FROM generate_series(1, %d) g ON CONFLICT DO NOTHING", Rows), t); err != nil {
			return err
		}
	}
	return nil
}

// tenantQuery is the lookup of the tenant workload on schema's
// tenant_items: the item's name, and app.tenant as the statement saw it.
func tenantQuery(schema string) string {
	return "SELECT name, current_setting('app.tenant') FROM " + pgx.Identifier{schema, "tenant_items"}.Sanitize() + " WHERE id = $1"
}

// setTenantSQL is the hand-written servers' first statement of each
// transaction.
const setTenantSQL = "SELECT set_config('app.tenant', $1, true)"

// stmt is the one statement of a message of the tenant or write
// workloads: query, on item m.ID, reading into m.
type stmt struct {
	query string
	write bool // INSERT … RETURNING id, tenant; else the tenant lookup
}

func (st stmt) scan(m *Msg) []any {
	if st.write {
		return []any{&m.Row, &m.Tenant}
	}
	return []any{&m.Name, &m.Tenant}
}

// run runs st on q through database/sql.
func (st stmt) run(ctx context.Context, q querier, m *Msg) error {
	return q.QueryRowContext(ctx, st.query, m.ID).Scan(st.scan(m)...)
}

// runPgx runs st on q through pgx.
func (st stmt) runPgx(ctx context.Context, q pgxQuerier, m *Msg) error {
	return q.QueryRow(ctx, st.query, m.ID).Scan(st.scan(m)...)
}

// runTx is the raw mode's tenant message, as written by hand on
// database/sql: BEGIN, set_config(…, true), the statement, COMMIT.
func (st stmt) runTx(ctx context.Context, db *sql.DB, t string, m *Msg) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, setTenantSQL, t); err != nil {
		return err
	}
	if err := st.run(ctx, tx, m); err != nil {
		return err
	}
	return tx.Commit()
}

// runPgxTx is the pgxpool mode's tenant message, as written by hand on
// pgxpool: pgx.BeginFunc, set_config(…, true), the statement.
func (st stmt) runPgxTx(ctx context.Context, p *pgxpool.Pool, t string, m *Msg) error {
	return pgx.BeginFunc(ctx, p, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, setTenantSQL, t); err != nil {
			return err
		}
		return st.runPgx(ctx, tx, m)
	})
}

// tenantHTTP declares the request's tenant (?tenant=) for every statement
// of the request, as an authentication middleware would; it answers 400
// where there is none.
func tenantHTTP(next http.Handler) http.Handler {
	setting := tenantSetting()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t := r.URL.Query().Get("tenant")
		if t == "" {
			writeJSON(w, http.StatusBadRequest, Msg{Error: "tenant: missing"})
			return
		}
		next.ServeHTTP(w, r.WithContext(setting.With(r.Context(), t)))
	})
}
