package itemserver

import (
	"context"
	"database/sql"

	"github.com/jackc/pgx/v5"
)

// The write workload (Config.Write): each /ws/items frame {"id":k}, and
// each POST /items/{k}, inserts one row into writes, whose key is a
// sequence (bigserial), and is answered {"id":k,"row":n} with the new
// row's id (and, with Config.Tenant, the row's tenant: app.tenant as the
// INSERT saw it). GET /items/{k} still looks item k up. Every mode runs
// one INSERT … RETURNING per message, the raw mode on the plain *sql.DB,
// which never resets a session; dbscope counts an INSERT as leaving
// session state (the sequence's currval), so each one leaves its scope to
// be reset, in the round trip of the connection's next statement.

// setupWrites is Setup's part for Config.Write: the writes table, under a
// row-level-security policy on app.tenant that binds TenantRole (not the
// table's owner, who writes without a tenant), and, with Config.Tenant,
// TenantRole's grants.
func setupWrites(ctx context.Context, tx *sql.Tx, forTenant bool) error {
	if err := createTable(ctx, tx, "writes",
		"CREATE TABLE writes (id bigserial PRIMARY KEY, item int NOT NULL, tenant text NOT NULL DEFAULT coalesce(current_setting('app.tenant', true), ''))",
		"ALTER TABLE writes ENABLE ROW LEVEL SECURITY",
		"CREATE POLICY tenant_rows ON writes USING (tenant = current_setting('app.tenant', true))",
	); err != nil || !forTenant {
		return err
	}
	role := pgx.Identifier{TenantRole}.Sanitize()
	for _, q := range []string{
		"GRANT SELECT, INSERT ON writes TO " + role,
		"GRANT USAGE ON SEQUENCE writes_id_seq TO " + role,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// writeQuery is the statement of the write workload on schema's writes.
func writeQuery(schema string) string {
	return "INSERT INTO " + pgx.Identifier{schema, "writes"}.Sanitize() + " (item) VALUES ($1) RETURNING id, tenant"
}
