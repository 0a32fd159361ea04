package itemserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Rows is the number of rows of the items table: ids 1..Rows, named
// item-<id>.
const Rows = 10000

// itemQuery reads one item's name: the one statement of every message and
// request.
const itemQuery = "SELECT name FROM items WHERE id = $1"

// sleepQuery is itemQuery holding the connection for $2 seconds first: the
// test-only op that makes slots contended (Config.TestOps).
const sleepQuery = "SELECT name FROM items, pg_sleep($2) WHERE id = $1"

// Msg is a websocket request and its reply, and the body of an HTTP
// answer. Sleep and Pad are test ops, honored only with Config.TestOps.
type Msg struct {
	ID    int    `json:"id"`
	Name  string `json:"name,omitempty"`
	Error string `json:"error,omitempty"`

	// Tenant is, with Config.Tenant, app.tenant as the statement that
	// answered saw it.
	Tenant string `json:"tenant,omitempty"`

	// Row is, with Config.Write, the id of the row the message inserted.
	Row int64 `json:"row,omitempty"`

	// Sleep, in seconds, holds the query's connection that long.
	Sleep float64 `json:"sleep,omitempty"`

	// Pad asks for a reply padded with that many bytes (at most 1 MiB),
	// sent back in Padding: to fill a slow client's buffers quickly.
	Pad     int    `json:"pad,omitempty"`
	Padding string `json:"padding,omitempty"`
}

// maxPad bounds Msg.Pad.
const maxPad = 1 << 20

// setupKey is the advisory lock that serializes servers creating the table.
const setupKey = 0x6462736370 // "dbscp"

// Setup creates what the workload of cfg needs, where it is missing, in
// the schema first in the connection's search_path, which it returns: the
// items table and its rows; with cfg.Tenant, the tenant_items table, its
// policy and rows, and the role that reads it (setupTenant); with
// cfg.Write, the writes table (setupWrites). It runs as the connection's
// user. Servers starting at once take turns on an advisory lock.
func Setup(ctx context.Context, db *sql.DB, cfg Config) (schema string, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return "", fmt.Errorf("itemserver: setup: %w", err)
	}
	defer tx.Rollback()
	for _, q := range []string{
		fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", setupKey),
		"CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text NOT NULL)",
		fmt.Sprintf("INSERT INTO items SELECT g, 'item-' || g FROM generate_series(1, %d) g ON CONFLICT (id) DO NOTHING", Rows),
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return "", fmt.Errorf("itemserver: setup: %w", err)
		}
	}
	var sch sql.NullString
	if err := tx.QueryRowContext(ctx, "SELECT current_schema()").Scan(&sch); err != nil {
		return "", fmt.Errorf("itemserver: setup: %w", err)
	}
	schema = sch.String
	if !sch.Valid && (cfg.Tenant || cfg.Write) {
		return "", errors.New("itemserver: setup: no schema in the search_path")
	}
	if cfg.Tenant {
		err = setupTenant(ctx, tx, schema, cfg.tenants())
	}
	if err == nil && cfg.Write {
		err = setupWrites(ctx, tx, cfg.Tenant)
	}
	if err == nil {
		err = tx.Commit()
	}
	if err != nil {
		return "", fmt.Errorf("itemserver: setup: %w", err)
	}
	return schema, nil
}

// createTable runs stmts, which create table, unless table exists: its
// policy and grants are made with it, once (under Setup's lock).
func createTable(ctx context.Context, tx *sql.Tx, table string, stmts ...string) error {
	var exists bool
	if err := tx.QueryRowContext(ctx, "SELECT to_regclass($1) IS NOT NULL", table).Scan(&exists); err != nil || exists {
		return err
	}
	for _, q := range stmts {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// querier is what the statement of a message runs on: a *sql.DB (raw), a
// *sql.Tx (raw, tenant) or a scope.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// lookup fills m.Name from the database, honoring m.Sleep when testOps.
func lookup(ctx context.Context, q querier, m *Msg, testOps bool) error {
	if testOps && m.Sleep > 0 {
		return q.QueryRowContext(ctx, sleepQuery, m.ID, m.Sleep).Scan(&m.Name)
	}
	return q.QueryRowContext(ctx, itemQuery, m.ID).Scan(&m.Name)
}

// pgxQuerier is what the pgx modes' lookup runs on: a *pgxpool.Pool
// (pgxpool) or a scope, through its pgx methods (pgx).
type pgxQuerier interface {
	QueryRow(ctx context.Context, query string, args ...any) pgx.Row
}

// lookupPgx is lookup through pgx's own interface.
func lookupPgx(ctx context.Context, q pgxQuerier, m *Msg, testOps bool) error {
	if testOps && m.Sleep > 0 {
		return q.QueryRow(ctx, sleepQuery, m.ID, m.Sleep).Scan(&m.Name)
	}
	return q.QueryRow(ctx, itemQuery, m.ID).Scan(&m.Name)
}
