package groups

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrPayloadTable is returned by [New] over [NewPostgres] where the table
// of the messages past NOTIFY's limit (PostgresOptions.PayloadTable) is
// missing and the listener's role cannot create it (no CREATE on the
// schema, as an application role under row-level security often has
// not), or where that role may not SELECT, UPDATE and DELETE its rows, or
// its transactions are read-only (default_transaction_read_only, a
// standby: it could not delete old rows). Create it
// beforehand with the DDL in NewPostgres's doc, and grant, or set
// PostgresOptions.MaxPayload to 7,999 or less to go without it.
var ErrPayloadTable = errors.New("groups: no table for large messages")

// payloadTable carries the messages past NOTIFY's limit: the statements
// on the table, and their counters.
type payloadTable struct {
	name       string // as PayloadTable gives it
	quoted     string // each part quoted
	ddl        string
	insertSQL  string // the row and the NOTIFY of its reference, in one statement
	fetchSQL   string
	cleanupSQL string // the stamp, and the first batch of the delete
	deleteSQL  string // a batch of the delete
	perDelete  int    // rows deleted in one statement at most: cleanupBatch, or what a test set
	maxAge     time.Duration
	perFetch   int // references read in one query at most
	log        *slog.Logger

	fetchFailed, cleanupFailed atomic.Bool // logged once, until a read or a cleanup succeeds
	cleanupLocked              atomic.Bool // logged once

	sent, sentBytes, received, receivedBytes atomic.Int64
}

func newPayloadTable(o PostgresOptions) *payloadTable {
	if o.MaxPayload <= maxNotify {
		return nil
	}
	name := o.PayloadTable
	// Each part quoted: a name of the letters PayloadTable takes may be
	// a keyword PostgreSQL reserves (user, order).
	quoted := `"` + strings.ReplaceAll(name, ".", `"."`) + `"`
	index := `"` + name[strings.LastIndexByte(name, '.')+1:] + `_created"`
	t := &payloadTable{
		name:   name,
		quoted: quoted,
		ddl: "CREATE UNLOGGED TABLE IF NOT EXISTS " + quoted + ` (
	id      uuid PRIMARY KEY,
	created timestamptz NOT NULL DEFAULT 'infinity',
	body    text NOT NULL
);
CREATE INDEX IF NOT EXISTS ` + index + " ON " + quoted + " (created)",
		maxAge: o.PayloadMaxAge,
		// 16 MiB of bodies in memory at most, between 1 and 100 of them.
		perFetch:  min(max((16<<20)/o.MaxPayload, 1), 100),
		perDelete: cleanupBatch,
		log:       o.Logger,
	}
	t.statements(quoted)
	return t
}

// statements makes the statements on the table, named table: ensure
// names it by its schema, as the listener found it.
func (t *payloadTable) statements(table string) {
	t.insertSQL = "WITH r AS (INSERT INTO " + table + " (id, created, body) VALUES ($3, 'infinity', $4) RETURNING id) " +
		"SELECT pg_notify($1, $2) FROM r"
	t.fetchSQL = "SELECT id::text, body FROM " + table + " WHERE id = ANY($1::uuid[])"
	// One implicit transaction for the statements: one now(), and the
	// SET LOCAL for both. Where the table or its rows are locked (by
	// another listener's cleanup, a VACUUM FULL), the cleanup waits
	// cleanupLockTimeout at most, and the next tick tries again: the
	// listener delivers meanwhile.
	// The delete goes in batches (cleanupBatch rows), so that a backlog
	// (rows kept while the listener was down, a slow DELETE trigger) is
	// deleted over ticks, each statement well within the listener's
	// statement_timeout, rather than canceled there at every tick.
	del := fmt.Sprintf("DELETE FROM %[1]s WHERE id IN (SELECT id FROM %[1]s WHERE created < now() - interval '%[2]d microseconds' LIMIT %[3]d)",
		table, t.maxAge.Microseconds(), t.perDelete)
	lock := fmt.Sprintf("SET LOCAL lock_timeout = %d; ", cleanupLockTimeout.Milliseconds())
	t.cleanupSQL = lock + "UPDATE " + table + " SET created = now() WHERE created = 'infinity'; " + del
	t.deleteSQL = lock + del
}

// cleanupBatch is how many rows one statement of the cleanup deletes at
// most; cleanupBudget, how long a tick's cleanup goes on deleting full
// batches (the listener delivers nothing meanwhile).
const (
	cleanupBatch  = 1000
	cleanupBudget = time.Second
)

// cleanupLockTimeout bounds the cleanup's wait for a lock on the table.
const cleanupLockTimeout = 200 * time.Millisecond

// validTable reports whether name is a table name NewPostgres takes: no
// character that needs quoting but for case (each part is quoted, as a
// keyword would need), and room for the index's name beside it.
func validTable(name string) bool {
	parts := strings.Split(name, ".")
	if len(parts) > 2 {
		return false
	}
	for _, p := range parts {
		if len(p) == 0 || len(p) > 55 || p[0] >= '0' && p[0] <= '9' {
			return false
		}
		for i := 0; i < len(p); i++ {
			if c := p[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
				return false
			}
		}
	}
	return true
}

// ensure makes the table where it is missing, on the listener's
// connection at Start, and checks that the listener may read, stamp and
// delete its rows.
func (t *payloadTable) ensure(ctx context.Context, conn *pgconn.PgConn) error {
	// NULL: missing; else the privileges the listener lacks to read,
	// stamp and delete, "" for none (a list of privileges asks for any of
	// them: each is asked for alone).
	check := func() (string, error) {
		res := conn.ExecParams(ctx, "SELECT CASE WHEN to_regclass($1) IS NOT NULL THEN concat_ws(', ', "+
			"CASE WHEN NOT has_table_privilege($1, 'SELECT') THEN 'SELECT' END, "+
			"CASE WHEN NOT has_table_privilege($1, 'UPDATE') THEN 'UPDATE' END, "+
			"CASE WHEN NOT has_table_privilege($1, 'DELETE') THEN 'DELETE' END) END",
			[][]byte{[]byte(t.quoted)}, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 {
			return "", res.Err
		}
		if res.Rows[0][0] == nil {
			return "missing", nil
		}
		return string(res.Rows[0][0]), nil
	}
	state, err := check()
	if err != nil {
		return err
	}
	if state == "missing" {
		_, err := conn.Exec(ctx, t.ddl).ReadAll()
		if err == nil {
			return t.qualify(ctx, conn) // its owner
		}
		// Made meanwhile by another instance?
		if state, _ = check(); state == "missing" {
			return fmt.Errorf("%w: %s: %w", ErrPayloadTable, t.name, err)
		}
	}
	if state != "" {
		return fmt.Errorf("%w: %s: the listener's role needs SELECT, UPDATE and DELETE on it, and lacks %s", ErrPayloadTable, t.name, state)
	}
	// Privileges are not enough: a read-only session cannot stamp and
	// delete the rows either, and the table would grow for good.
	res := conn.ExecParams(ctx, "SELECT pg_catalog.current_setting('transaction_read_only')", nil, nil, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	if len(res.Rows) == 1 && string(res.Rows[0][0]) == "on" {
		return fmt.Errorf("%w: %s: the listener's transactions are read-only (default_transaction_read_only, or a standby): it could not stamp and delete the table's rows", ErrPayloadTable, t.name)
	}
	return t.qualify(ctx, conn)
}

// qualify names the table by the schema the listener's search_path found
// it in, in every statement on it: a sender's INSERT reaches that table
// whatever the search_path of its scope (a tenant's, declared with
// dbctx.NewSetting), where the listener reads and deletes.
func (t *payloadTable) qualify(ctx context.Context, conn *pgconn.PgConn) error {
	res := conn.ExecParams(ctx, "SELECT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname) "+
		"FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace "+
		"WHERE c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1)",
		[][]byte{[]byte(t.quoted)}, nil, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	if len(res.Rows) != 1 || res.Rows[0][0] == nil {
		return fmt.Errorf("%w: %s: not found after it was made", ErrPayloadTable, t.name)
	}
	t.statements(string(res.Rows[0][0]))
	return nil
}

// refPrefix starts the NOTIFY of a reference, "r|<id>|<group>"; a
// layer's envelope starts with "1|".
const refPrefix = "r|"

// publish writes payload to the table and NOTIFYs its reference on
// channel, in one statement on s (in its transaction, if any).
func (t *payloadTable) publish(ctx context.Context, s *dbctx.Scope, channel, group string, payload []byte) error {
	id := newID()
	if _, err := s.ExecContext(ctx, t.insertSQL, channel, refPrefix+id+"|"+group, id, string(payload)); err != nil {
		return err
	}
	t.sent.Add(1)
	t.sentBytes.Add(int64(len(payload)))
	return nil
}

// newID returns a random (version 4) UUID as PostgreSQL writes it.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:], b[10:])
	return string(s[:])
}

// parseRef reads a reference's id and group; ok is false for anything
// else. The id must be a UUID as newID writes it: NOTIFY asks for no
// privilege, and one id PostgreSQL cannot read would fail the fetch of
// every reference of its batch (a gap for each).
func parseRef(p string) (id, group string, ok bool) {
	rest, ok := strings.CutPrefix(p, refPrefix)
	if !ok {
		return "", "", false
	}
	id, group, ok = strings.Cut(rest, "|")
	return id, group, ok && isID(id)
}

// isID reports whether id is a UUID as newID writes it: lower-case hex,
// dashes at 8, 13, 18 and 23.
func isID(id string) bool {
	if len(id) != 36 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// batch returns how many of notes to hand on next, and the ids of the
// references among them: perFetch at most.
func (t *payloadTable) batch(notes []string) (int, []string) {
	var ids []string
	for i, p := range notes {
		id, _, ok := parseRef(p)
		if !ok {
			continue
		}
		if len(ids) == t.perFetch {
			return i, ids
		}
		ids = append(ids, id)
	}
	return len(notes), ids
}

// fetch reads the bodies of ids on the listener's connection, which is
// idle between waits. A row missing is missing from the map. It fails
// only where the connection broke or ctx ended; a statement's error (the
// table dropped, a privilege revoked) is logged once until a read
// succeeds again, and every body missing, unread (not gone: the caller
// says nothing more of them).
func (t *payloadTable) fetch(ctx context.Context, conn *pgconn.PgConn, ids []string) (_ map[string][]byte, unread bool, _ error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	arr := "{" + strings.Join(ids, ",") + "}"
	res := conn.ExecParams(ctx, t.fetchSQL, [][]byte{[]byte(arr)}, nil, nil, nil).Read()
	if res.Err != nil {
		if conn.IsClosed() || ctx.Err() != nil {
			return nil, false, res.Err
		}
		if !t.fetchFailed.Swap(true) {
			t.log.Error("groups: reading large messages from the table failed; each is a gap for its group until a read succeeds",
				"table", t.name, "err", res.Err)
		}
		return nil, true, nil
	}
	t.fetchFailed.Store(false) // the next failure is news
	bodies := make(map[string][]byte, len(res.Rows))
	for _, row := range res.Rows {
		bodies[string(row[0])] = row[1]
		t.received.Add(1)
		t.receivedBytes.Add(int64(len(row[1])))
	}
	return bodies, false, nil
}

// missed counts the references of groups whose bodies could not be read,
// and logs them once per batch: their rows were gone (unread: the read
// failed, and fetch has said so). Where this engine has no table
// (MaxPayload at NOTIFY's limit, larger on a sender) it logs that
// misconfiguration once, at ERROR.
func (e *Postgres) missed(groups []string, unread bool) {
	e.missing.Add(int64(len(groups)))
	if unread {
		return
	}
	t := e.table
	if t == nil {
		if !e.tableless.Swap(true) {
			e.opts.Logger.Error("groups: large messages arrive, and this instance has no table to read them from "+
				"(PostgresOptions.MaxPayload is at most 7,999 here, larger on a sender): each is a gap for its group; "+
				"set the same MaxPayload on every instance", "groups", groups)
		}
		return
	}
	t.log.Warn("groups: large messages were gone from the table when read: a gap for their groups",
		"table", t.name, "missing", len(groups), "groups", groups)
}

// cleanup stamps the rows committed since the last tick of any listener
// (their created is 'infinity' until then: a row is seen only once its
// transaction has committed) with the time, and deletes those stamped
// more than PayloadMaxAge ago, on the listener's connection at its
// sampling tick. A row's age thus counts from its commit, give or take a
// tick, not from its INSERT: one whose transaction lasted longer than
// PayloadMaxAge is not deleted before every listener that got its
// NOTIFY, at the commit, had PayloadMaxAge to read it. A row whose
// transaction rolled back is gone with it, and every committed one is
// stamped at the next tick: nothing stays for ever. The delete goes in
// batches of cleanupBatch rows, full batches one after another for
// cleanupBudget at most, then again at the next tick: a backlog goes over
// ticks, the listener delivering between them. It fails only where the
// connection broke or ctx ended; a statement's error is logged once until
// a cleanup succeeds (a batch that takes longer than the listener's
// statement_timeout, 8 s, is canceled, and tried again at each tick).
func (t *payloadTable) cleanup(ctx context.Context, conn *pgconn.PgConn) error {
	start := time.Now()
	q := t.cleanupSQL
	for {
		full, err := t.cleanupOnce(ctx, conn, q)
		if err != nil || !full || time.Since(start) >= cleanupBudget {
			return err
		}
		q = t.deleteSQL // a full batch: there may be more
	}
}

// cleanupOnce runs q, the cleanup's statements, and reports whether its
// delete took a full batch; see cleanup for its errors.
func (t *payloadTable) cleanupOnce(ctx context.Context, conn *pgconn.PgConn, q string) (full bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, q).ReadAll()
	if err == nil {
		// The next failure is news. (A wait for a lock is not: another
		// listener's cleanup of the table, told once.)
		t.cleanupFailed.Store(false)
		return len(res) > 0 && res[len(res)-1].CommandTag.RowsAffected() >= int64(t.perDelete), nil
	}
	if conn.IsClosed() || ctx.Err() != nil {
		return false, err
	}
	if pe := (*pgconn.PgError)(nil); errors.As(err, &pe) && pe.Code == "55P03" {
		// lock_not_available: the next tick tries again.
		if !t.cleanupLocked.Swap(true) {
			t.log.Warn("groups: deleting old large messages from the table waits for a lock on it; trying again at each tick", "table", t.name, "err", err)
		}
		return false, nil
	}
	if !t.cleanupFailed.Swap(true) {
		t.log.Error("groups: deleting old large messages from the table failed", "table", t.name, "err", err)
	}
	return false, nil
}

// PostgresStats is a snapshot of the PostgreSQL engine's own figures;
// the counters count since the engine was made.
type PostgresStats struct {
	// QueueUsage is PostgreSQL's pg_notification_queue_usage() (0 to 1:
	// at 1, commits that NOTIFY fail), as last sampled (see
	// PostgresOptions.SampleEvery); -1 before the first sample.
	QueueUsage float64

	// Messages past NOTIFY's limit, carried through the table (see
	// NewPostgres).
	LargeSent          int64 // written by this instance's sends (a rollback undoes the row, not the count)
	LargeSentBytes     int64
	LargeReceived      int64 // read by this instance's listener: once per message, whatever the members
	LargeReceivedBytes int64
	LargeMissing       int64 // references whose row was gone when read, or that this instance has no table for: a gap for the group
}

// Stats returns a snapshot of the engine's figures; the layer's are
// [Layer.Stats].
func (e *Postgres) Stats() PostgresStats {
	st := PostgresStats{QueueUsage: e.queueUsage(), LargeMissing: e.missing.Load()}
	t := e.table
	if t == nil {
		return st
	}
	st.LargeSent = t.sent.Load()
	st.LargeSentBytes = t.sentBytes.Load()
	st.LargeReceived = t.received.Load()
	st.LargeReceivedBytes = t.receivedBytes.Load()
	return st
}
