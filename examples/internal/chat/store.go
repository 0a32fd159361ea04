package chat

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"time"
	"unicode/utf8"
)

// DBTX is what the queries need of a database handle: the interface sqlc
// generates, which *dbctx.Scope satisfies.
type DBTX interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Message is one stored chat message, of a tenant's room.
type Message struct {
	ID      int64     `json:"id"`
	Tenant  string    `json:"tenant"`
	Room    string    `json:"room"`
	Author  string    `json:"author"`
	Body    string    `json:"body"`
	Created time.Time `json:"created"`
}

// Post is a message to create, as clients send it over HTTP or a socket.
type Post struct {
	Room   string `json:"room"`
	Author string `json:"author"`
	Body   string `json:"body"`
}

// DefaultRoom is the room of a post or a query that names none.
const DefaultRoom = "lobby"

// HistoryLen is how many of a room's latest messages History returns.
const HistoryLen = 100

// ErrInvalid is wrapped by the errors of Check and CheckRoom: the client
// sent something wrong (HTTP 400, an error frame on a socket).
var ErrInvalid = errors.New("chat: invalid")

// CheckRoom returns room trimmed, DefaultRoom for "", or an error
// wrapping ErrInvalid.
func CheckRoom(room string) (string, error) {
	room = strings.TrimSpace(room)
	switch {
	case room == "":
		return DefaultRoom, nil
	case !storable(room):
		return "", invalid("room name not valid UTF-8 text")
	case utf8.RuneCountInString(room) > 64:
		return "", invalid("room name longer than 64 characters")
	}
	return room, nil
}

// storable reports whether s can be stored as text: PostgreSQL refuses
// invalid UTF-8 and the NUL character (SQLSTATE 22021, 22P05), which a
// client can send in a URL (%00, %ff) or a JSON string (\u0000). Refused
// here, they are the client's error (400), not the database's (500).
func storable(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// Check trims p, fills in defaults (DefaultRoom, author "anonymous") and
// returns an error wrapping ErrInvalid when p cannot be stored.
func (p *Post) Check() error {
	room, err := CheckRoom(p.Room)
	if err != nil {
		return err
	}
	p.Room = room
	p.Author = strings.TrimSpace(p.Author)
	p.Body = strings.TrimSpace(p.Body)
	if p.Author == "" {
		p.Author = "anonymous"
	}
	switch {
	case !storable(p.Body):
		return invalid("message not valid UTF-8 text")
	case !storable(p.Author):
		return invalid("author name not valid UTF-8 text")
	case p.Body == "":
		return invalid("empty message")
	case utf8.RuneCountInString(p.Body) > 2000:
		return invalid("message longer than 2000 characters")
	case utf8.RuneCountInString(p.Author) > 64:
		return invalid("author name longer than 64 characters")
	}
	return nil
}

type invalidError string

func (e invalidError) Error() string { return string(e) }
func (e invalidError) Unwrap() error { return ErrInvalid }

func invalid(why string) error { return invalidError(why) }

// Migrate creates the messages table, its index and its row-level
// security if they do not exist; it is safe to run at every start. Each
// message is a tenant's: its tenant column defaults to the app.tenant
// setting of the statement that inserts it (an INSERT without one fails),
// and the policy lets a statement see, and write, its tenant's rows only.
// The policy binds every role but superusers and those with BYPASSRLS,
// the table's owner included (FORCE).
//
// Run it in a transaction, with whatever else sets up the schema: it
// takes MigrateLock, a transaction-level advisory lock, first, so that
// instances starting together run it one after another (run at once,
// CREATE TABLE IF NOT EXISTS and ALTER TABLE fail with "duplicate key
// value", "tuple concurrently updated").
func Migrate(ctx context.Context, db DBTX) error {
	for _, stmt := range []string{
		`SELECT pg_advisory_xact_lock(` + MigrateLock + `)`,
		`CREATE TABLE IF NOT EXISTS messages (
			id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			tenant     text NOT NULL DEFAULT current_setting('app.tenant'),
			room       text NOT NULL,
			author     text NOT NULL,
			body       text NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now()
		)`,
		// A table made by an earlier version of the example.
		`ALTER TABLE messages ADD COLUMN IF NOT EXISTS tenant text NOT NULL DEFAULT '` + DefaultTenant + `'`,
		`ALTER TABLE messages ALTER COLUMN tenant SET DEFAULT current_setting('app.tenant')`,
		`DROP INDEX IF EXISTS messages_room_id`,
		`CREATE INDEX IF NOT EXISTS messages_tenant_room_id ON messages (tenant, room, id)`,
		`ALTER TABLE messages ENABLE ROW LEVEL SECURITY`,
		`ALTER TABLE messages FORCE ROW LEVEL SECURITY`,
		`DO $$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_policies WHERE schemaname = current_schema() AND tablename = 'messages' AND policyname = 'tenant_rows') THEN
				CREATE POLICY tenant_rows ON messages
					USING (tenant = current_setting('app.tenant', true))
					WITH CHECK (tenant = current_setting('app.tenant', true));
			END IF;
		END $$`,
	} {
		if _, err := db.ExecContext(ctx, stmt); err != nil {
			return err
		}
	}
	return nil
}

// MigrateLock is the key of the advisory lock Migrate takes, in SQL.
const MigrateLock = "7165431804292546601"

// DefaultTenant is the tenant of a request or a socket that names none.
const DefaultTenant = "demo"

// CheckTenant returns tenant trimmed, DefaultTenant for "", or an error
// wrapping ErrInvalid.
func CheckTenant(tenant string) (string, error) {
	tenant = strings.TrimSpace(tenant)
	switch {
	case tenant == "":
		return DefaultTenant, nil
	case !storable(tenant):
		return "", invalid("tenant name not valid UTF-8 text")
	case utf8.RuneCountInString(tenant) > 64:
		return "", invalid("tenant name longer than 64 characters")
	}
	return tenant, nil
}

// Insert stores a checked post and returns the message it became.
func Insert(ctx context.Context, db DBTX, p Post) (Message, error) {
	m := Message{Room: p.Room, Author: p.Author, Body: p.Body}
	err := db.QueryRowContext(ctx,
		`INSERT INTO messages (room, author, body) VALUES ($1, $2, $3) RETURNING id, tenant, created_at`,
		p.Room, p.Author, p.Body).Scan(&m.ID, &m.Tenant, &m.Created)
	return m, err
}

// ByID returns the message id.
func ByID(ctx context.Context, db DBTX, id int64) (Message, error) {
	var m Message
	err := db.QueryRowContext(ctx, `SELECT id, tenant, room, author, body, created_at FROM messages WHERE id = $1`, id).
		Scan(&m.ID, &m.Tenant, &m.Room, &m.Author, &m.Body, &m.Created)
	return m, err
}

// History returns the latest HistoryLen messages of room, oldest first:
// of the tenant the statement runs with, which the policy picks.
func History(ctx context.Context, db DBTX, room string) ([]Message, error) {
	rows, err := db.QueryContext(ctx, `
		SELECT id, tenant, room, author, body, created_at FROM (
			SELECT * FROM messages WHERE room = $1 ORDER BY id DESC LIMIT $2
		) latest ORDER BY id`, room, HistoryLen)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	msgs := []Message{}
	for rows.Next() {
		var m Message
		if err := rows.Scan(&m.ID, &m.Tenant, &m.Room, &m.Author, &m.Body, &m.Created); err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
	}
	return msgs, rows.Err()
}
