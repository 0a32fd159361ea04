package itemserver

import (
	"context"
	"database/sql"
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

// Setup creates the items table in the connection's search_path if it is
// missing and fills in the rows that are missing. Servers starting at once
// take turns on an advisory lock.
func Setup(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("itemserver: setup: %w", err)
	}
	defer tx.Rollback()
	for _, q := range []string{
		fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", setupKey),
		"CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text NOT NULL)",
		fmt.Sprintf("INSERT INTO items SELECT g, 'item-' || g FROM generate_series(1, %d) g ON CONFLICT (id) DO NOTHING", Rows),
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("itemserver: setup: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("itemserver: setup: %w", err)
	}
	return nil
}

// querier is what the item lookup runs on: a *sql.DB (raw) or a scope.
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
