package groups

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/logattrs"
	"github.com/dbscope/dbscope/internal/scopes"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresOptions configures [NewPostgres].
type PostgresOptions struct {
	// ListenDSN is the connection string of the listener: a connection of
	// its own, outside the pool's slots, straight to PostgreSQL (LISTEN
	// does not work through PgBouncer in transaction mode), to the same
	// database the pool's connections NOTIFY on. Required. Through a
	// pooler, Start fails with [ErrPooledListener] (see there); on a
	// standby, with [ErrStandbyListener]; on another database than the
	// pool's, with [ErrListenerDatabase].
	ListenDSN string

	// Namespace keeps apart layers that share a database (several apps,
	// the tests of one): groups of the same name in two namespaces never
	// meet. Default: "", one namespace.
	Namespace string

	// SampleEvery is how often the listener samples
	// pg_notification_queue_usage() (PostgresStats.QueueUsage), which also checks
	// its connection. Default: 10s.
	SampleEvery time.Duration

	// MaxPayload is the largest message the engine carries, envelope
	// included (see [NewPostgres]; a body that is not UTF-8 text takes
	// 4/3 of its size in base64): what NOTIFY's 7,999 bytes cannot hold
	// goes through PayloadTable. Default: 1 MiB; below 1 GiB, PostgreSQL's
	// limit on a value. At most 7,999: NOTIFY only, no table. Set the
	// same on every instance: one without the table cannot read what
	// another sends through it (a gap for its group, logged once at
	// ERROR).
	MaxPayload int

	// PayloadTable is the table of the messages past NOTIFY's limit: a
	// name, or schema.name, of lower-case ASCII letters, digits and '_',
	// found by the search_path of the listener's connection as Start
	// connects: Start creates it where it is missing, if it can (see
	// NewPostgres for its DDL), and from then on names it by its schema,
	// so that a Send reaches it whatever its scope's search_path (a
	// tenant's, declared with dbctx.NewSetting). Layers of
	// several namespaces may share it (the shortest PayloadMaxAge among
	// them applies). Default: dbscope_groups_payloads.
	PayloadTable string

	// PayloadMaxAge is how long a row of PayloadTable is kept for the
	// listeners to read, from its transaction's commit (give or take
	// SampleEvery), however long that transaction lasted: each listener
	// deletes older rows every SampleEvery. A listener that reads a
	// reference after its row went gives the group a gap. Listeners read
	// within milliseconds of the commit unless they fall behind; the
	// table holds what was sent in the last PayloadMaxAge (at 10 messages
	// of 1 MiB a second, 3 GB at the default): lower it for such rates.
	// Default: 5 minutes.
	PayloadMaxAge time.Duration

	// Logger receives the listener's disconnections, and the first of
	// PostgreSQL's refusals of its reconnections in each outage. A panic
	// of its handler loses the record and ends nothing. Default:
	// slog.Default().
	Logger *slog.Logger
}

// NewPostgres returns an engine that carries messages between instances
// through PostgreSQL's LISTEN/NOTIFY: a message is a NOTIFY on a channel
// named after a hash of its group, sent through the scope in Send's ctx
// (inside its transaction, if any: delivered at commit, never on
// rollback) or, without one, through pool; each instance's listener
// LISTENs on the channels of the groups it has members of.
//
// A message takes its envelope's bytes: 29 and the group's name,
// with the body as it is where it is UTF-8 text, in base64 where not;
// in a database whose encoding (server_encoding, which the listener reads
// as it connects) is not UTF-8 nor SQL_ASCII, as it is only where it is
// ASCII: that encoding may hold no character for a UTF-8 one (LATIN1 has
// none for 中), and counts the others' bytes otherwise (the pool's
// connections must use client_encoding UTF8, as pgx requires; the
// listener sets it). Up to NOTIFY's 7,999 the envelope is the NOTIFY's
// payload. Past them,
// up to PostgresOptions.MaxPayload, it goes through a table: Send writes
// it there and NOTIFYs a reference, in one statement (one round trip) on
// the same connection, in the same transaction; each listener reads the
// bodies of the references that arrived in one query, once per instance
// whatever its members, and hands every message on in arrival order. The
// cost: the INSERT, after which the sender's connection owes dbctx's
// session reset (as after any DML); one SELECT per instance per batch of
// references; the rows, kept PayloadMaxAge and then deleted by the
// listeners. A reference whose row is gone when read is a gap for its
// group, counted in PostgresStats.LargeMissing. Behind PgBouncer in transaction
// mode (dbctx.Options.TransactionPooling) the statement is a transaction
// of its own or part of the sender's, as the NOTIFY alone is.
//
// Start creates the table where it is missing, UNLOGGED (a crash empties
// it, as it empties NOTIFY's queue), and fails with [ErrPayloadTable]
// where the listener's role cannot, or may not SELECT, UPDATE and DELETE
// its rows, or where the listener's transactions are read-only
// (default_transaction_read_only, a standby). Create it beforehand then,
// granting INSERT to the pool's role, with USAGE on the table's schema (a
// Send names the table by the schema the listener found it in; without
// either it fails with PostgreSQL's error), and SELECT, UPDATE, DELETE to
// the listener's:
//
//	CREATE UNLOGGED TABLE dbscope_groups_payloads (
//		id      uuid PRIMARY KEY,
//		created timestamptz NOT NULL DEFAULT 'infinity',
//		body    text NOT NULL
//	);
//	CREATE INDEX dbscope_groups_payloads_created ON dbscope_groups_payloads (created);
//	GRANT INSERT, SELECT, UPDATE, DELETE ON dbscope_groups_payloads TO app;
//
// A row is written with created 'infinity'; the first listener to see it
// committed stamps it with the time, from which PayloadMaxAge counts.
//
// The listener's connection must reach PostgreSQL itself: Start, and
// each reconnection, compares the backend it announced with
// pg_backend_pid(), and where they differ (a pooler sits between), Start
// fails with [ErrPooledListener], and a reconnection is refused (Ready
// returns it, logged at ERROR) until the listener reaches PostgreSQL.
//
// Every notifying commit takes a cluster-wide lock and signals every
// listening backend of the database: for large deployments, NATS.
//
// NOTIFY asks for no privilege: any role that may connect to the
// database can send to a group (a channel's name is a hash of the
// Namespace and the group, not a secret), and its message reaches the
// members as one of Send's would. Where roles you do not trust share the
// database, treat Event.Data as the input it is, or use NATS and its
// authorization.
//
// The listener's connection waits 5 seconds at most for a lock
// (lock_timeout), and runs no statement longer than 8 seconds
// (statement_timeout): where the table is locked (a VACUUM FULL, a
// CREATE INDEX), a body it cannot read is a gap for its group, and the
// cleanup waits 200 milliseconds at most and tries again at the next
// tick; the listener keeps its connection and delivers the rest. The
// cleanup deletes in batches of 1,000 rows, for a second at most per
// tick: a backlog (rows kept while the listener was down) goes over
// ticks, the listener delivering between them. It is not ended by the
// idle_session_timeout of the database or the role (it sets 0). A
// ListenDSN that sets any of these keeps its own.
//
// The listener reconnects forever, with backoff and jitter, and then
// LISTENs again and gives every member a gap. While it is down, a Join of
// a new group returns at once, as does one that was waiting for its
// LISTEN when the listener found its connection broken: their groups are
// LISTENed on reconnection, before that gap. Start connects once and
// fails where it cannot.
func NewPostgres(pool *dbctx.Pool, opts *PostgresOptions) *Postgres {
	var o PostgresOptions
	if opts != nil {
		o = *opts
	}
	if pool == nil || o.ListenDSN == "" {
		panic("groups: NewPostgres expects a pool and PostgresOptions.ListenDSN")
	}
	if o.MaxPayload < 0 || o.MaxPayload >= 1<<30 || o.PayloadMaxAge < 0 {
		panic("groups: NewPostgres expects 0 <= MaxPayload < 1 GiB, PayloadMaxAge >= 0")
	}
	if o.SampleEvery <= 0 {
		o.SampleEvery = 10 * time.Second
	}
	if o.MaxPayload == 0 {
		o.MaxPayload = 1 << 20
	}
	if o.PayloadTable == "" {
		o.PayloadTable = "dbscope_groups_payloads"
	}
	if !validTable(o.PayloadTable) {
		panic("groups: NewPostgres expects PayloadTable to be name or schema.name, of a-z, 0-9 and '_', 55 bytes at most")
	}
	if o.PayloadMaxAge == 0 {
		o.PayloadMaxAge = 5 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Logger = logattrs.Safe(o.Logger) // it logs from the listener's goroutine
	e := &Postgres{pool: pool, opts: o, refs: map[string]int{}}
	e.table = newPayloadTable(o)
	return e
}

// maxNotify is PostgreSQL's limit on a NOTIFY payload (< 8000 bytes), in
// the database's encoding.
const maxNotify = 7999

// ErrPooledListener is returned by [New] over [NewPostgres] where
// PostgresOptions.ListenDSN reaches PostgreSQL through a pooler (the
// backend that answers is not the one the connection announced):
// PgBouncer in transaction mode hands each statement to any server
// connection, so the LISTENs go to connections the notifications never
// reach, and nothing would be delivered. A pooler in session mode is
// refused too (the check cannot tell the modes apart). Point ListenDSN
// straight at PostgreSQL; the pool's connections may keep the pooler.
var ErrPooledListener = errors.New("groups: the listener's connection goes through a pooler (PgBouncer?); LISTEN needs one straight to PostgreSQL (PostgresOptions.ListenDSN)")

// ErrListenerDatabase is returned by [New] over [NewPostgres] where
// PostgresOptions.ListenDSN reaches another database than the pool's
// connections (another database of the cluster, or another cluster, as
// current_database() and pg_control_system()'s system_identifier tell):
// the NOTIFYs of the pool's commits would never reach the listener, and
// nothing would be delivered, without an error. Where either side cannot
// answer (the pool unavailable, or silent for 3 seconds;
// pg_control_system() not granted), the check is skipped.
var ErrListenerDatabase = errors.New("groups: the listener's connection reaches another database than the pool's; the NOTIFYs of the pool's commits never reach it (PostgresOptions.ListenDSN)")

// ErrStandbyListener is returned by [New] over [NewPostgres] where
// PostgresOptions.ListenDSN reaches a standby (pg_is_in_recovery(): a
// read replica): LISTEN cannot run there, and the NOTIFYs of the
// primary's commits never reach it. Point ListenDSN at the primary. A
// listener that reconnects to a standby (a failover's old primary, say)
// is refused as one through a pooler is.
var ErrStandbyListener = errors.New("groups: the listener's connection reaches a standby (pg_is_in_recovery); LISTEN needs the primary, where the pool's connections NOTIFY (PostgresOptions.ListenDSN)")

// Postgres is the engine of [NewPostgres]: give it to [New]; its Stats
// are its own.
type Postgres struct {
	pool *dbctx.Pool
	opts PostgresOptions
	in   Inbox
	cfg  *pgconn.Config

	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // the listener has returned

	refs map[string]int // channel: subscriptions; the listener's

	directSQL string // direct's query, where a test changes it

	mu        sync.Mutex
	pending   []command          // for the listener
	interrupt context.CancelFunc // ends the listener's wait, while it waits
	state     error              // nil while connected

	usage   atomic.Uint64 // math.Float64bits of the last queue usage
	sampled atomic.Bool

	// recoded: the database's encoding is neither UTF8 nor SQL_ASCII, as
	// the listener's connection last said: text other than ASCII may
	// have no character there, or take other bytes (see asciiText).
	recoded atomic.Bool
	refused error // the listener's: a reconnection found a pooler or a standby, logged

	// The listener's settings (listenerSettings) that ListenDSN does not
	// set, as set_config's arrays of names and values: direct sets them.
	settingNames, settingValues string

	table *payloadTable // nil where MaxPayload is NOTIFY's
	notes []string      // arrived, not yet handed on; the listener's

	missing   atomic.Int64 // references whose body could not be read
	tableless atomic.Bool  // a reference arrived with no table: logged once
}

type command struct {
	channel string
	listen  bool
	done    chan error // nil: nobody waits
}

// channelOf is the NOTIFY channel of group: the first 16 bytes of the
// SHA-256 of the namespace and the group in hex, so any name fits
// PostgreSQL's 63 bytes and needs no quoting; groups of a namespace that
// share one are told apart by the envelope.
func (e *Postgres) channelOf(group string) string {
	h := sha256.Sum256([]byte(e.opts.Namespace + "\x00" + group))
	return "dbscope_" + hex.EncodeToString(h[:16])
}

// Start connects the listener (ListenDSN), checks that it reaches the
// pool's database on a primary, and from then on hands the layer what is
// notified, reconnecting for ever; it fails where the first connection
// fails (see New).
func (e *Postgres) Start(in Inbox) error {
	e.in = in
	cfg, err := pgx.ParseConfig(e.opts.ListenDSN) // pgx's, so its own settings are not sent
	if err != nil {
		return fmt.Errorf("groups: ListenDSN: %w", err)
	}
	c := cfg.Config.Copy()
	c.OnNotification = func(_ *pgconn.PgConn, n *pgconn.Notification) {
		// Handed on by drain, between waits, when the connection is
		// free to read the bodies of references.
		e.notes = append(e.notes, n.Payload)
	}
	if c.RuntimeParams == nil {
		c.RuntimeParams = map[string]string{}
	}
	if _, ok := c.RuntimeParams["application_name"]; !ok {
		c.RuntimeParams["application_name"] = "dbscope-groups-listener"
	}
	// The envelopes are UTF-8; a database in another encoding would
	// otherwise send them in its own (its default client_encoding).
	c.RuntimeParams["client_encoding"] = "UTF8"
	// A ListenDSN that sets one of the listener's settings keeps its own
	// (see direct).
	var names, values []string
	for _, st := range listenerSettings {
		if _, set := c.RuntimeParams[st.name]; !set && !mentions(c.RuntimeParams["options"], st.name) {
			names, values = append(names, st.name), append(values, st.value)
		}
	}
	e.settingNames = "{" + strings.Join(names, ",") + "}"
	e.settingValues = "{" + strings.Join(values, ",") + "}"
	e.cfg = c
	e.ctx, e.cancel = context.WithCancel(context.Background())
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	conn, err := pgconn.ConnectConfig(ctx, e.cfg)
	if err == nil {
		err = e.direct(ctx, conn)
		if err != nil {
			conn.Close(context.Background())
		}
	}
	if err != nil {
		e.cancel()
		if errors.Is(err, ErrPooledListener) || errors.Is(err, ErrStandbyListener) {
			return err
		}
		return fmt.Errorf("groups: the listener's connection: %w", err)
	}
	// The pool may not answer (its pooler down, a host that accepts and
	// never answers): the check is skipped then, within a bound of its
	// own, and leaves the table's check its time.
	sctx, scancel := context.WithTimeout(ctx, sameDatabaseTimeout)
	err = e.sameDatabase(sctx, conn)
	scancel()
	if err != nil {
		conn.Close(context.Background())
		e.cancel()
		return err
	}
	if e.table != nil {
		if err := e.table.ensure(ctx, conn); err != nil {
			conn.Close(context.Background())
			e.cancel()
			return err
		}
	}
	e.done = make(chan struct{})
	go e.listen(conn)
	return nil
}

// listenerSettings are the settings of the listener's session, against
// those of the database or the role that would end it, or cost it its
// connection (see direct).
var listenerSettings = []struct{ name, value string }{
	// A statement of the listener's that waits for a lock (on the table
	// of large messages: a VACUUM FULL, a CREATE INDEX, a migration)
	// gives up before its own bound of 10 seconds: its error keeps the
	// connection, where that bound would close it.
	{"lock_timeout", "5s"},
	// Nor does any statement of its outlive that bound (a cleanup of a
	// backlog of rows, a read of large bodies on a loaded server): the
	// server cancels it first, and the error keeps the connection.
	{"statement_timeout", "8s"},
	// Waiting for notifications is not the idleness the setting is for
	// (PostgreSQL 14+): the server ended the session at each quiet spell
	// longer than it.
	{"idle_session_timeout", "0"},
}

// mentions reports whether options, a startup packet's "options" (-c
// name=value, -cname=value, --name=value, separated by spaces, a
// backslash escaping the next character), sets the parameter name, which
// PostgreSQL also reads with '-' for '_', in any case. Only a parameter
// of that name: deadlock_timeout does not set lock_timeout.
func mentions(options, name string) bool {
	var args []string
	var arg strings.Builder
	in, escaped := false, false
	for _, r := range options {
		switch {
		case escaped:
			arg.WriteRune(r)
			escaped, in = false, true
		case r == '\\':
			escaped, in = true, true
		case r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\f' || r == '\v':
			if in {
				args, in = append(args, arg.String()), false
				arg.Reset()
			}
		default:
			arg.WriteRune(r)
			in = true
		}
	}
	if in {
		args = append(args, arg.String())
	}
	for i := 0; i < len(args); i++ {
		var set string
		switch a := args[i]; {
		case a == "-c" && i+1 < len(args):
			i++
			set = args[i]
		case strings.HasPrefix(a, "--"):
			set = a[2:]
		case strings.HasPrefix(a, "-c"):
			set = a[2:]
		default:
			continue
		}
		n, _, _ := strings.Cut(set, "=")
		if strings.EqualFold(strings.ReplaceAll(n, "-", "_"), name) {
			return true
		}
	}
	return false
}

// sameDatabaseTimeout bounds sameDatabase, the pool's side mostly: the
// check is skipped where the pool does not answer within it.
const sameDatabaseTimeout = 3 * time.Second

// identitySQL names the database a connection reaches: the cluster's
// system identifier and the database's name.
const identitySQL = "SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system())::text, pg_catalog.current_database()::text"

// sameDatabase checks, at Start, that the listener's connection conn
// reaches the database the pool's connections do: else the NOTIFYs of
// their commits never reach it (ErrListenerDatabase). Where either cannot
// tell, it does not judge.
func (e *Postgres) sameDatabase(ctx context.Context, conn *pgconn.PgConn) error {
	res := conn.ExecParams(ctx, identitySQL, nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
		return nil
	}
	lsys, ldb := string(res.Rows[0][0]), string(res.Rows[0][1])
	var psys, pdb string
	err := e.pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, identitySQL).Scan(&psys, &pdb)
	})
	if err != nil {
		return nil
	}
	if lsys != psys || ldb != pdb {
		return fmt.Errorf("%w: the listener's is database %q of cluster %s, the pool's %q of cluster %s", ErrListenerDatabase, ldb, lsys, pdb, psys)
	}
	return nil
}

// directSQL is direct's query.
const directSQL = "SELECT pg_catalog.pg_backend_pid(), pg_catalog.pg_is_in_recovery()"

// direct checks that conn reaches PostgreSQL itself, not a pooler: the
// backend that answers is the one conn announced at startup (its
// BackendKeyData; a pooler announces one of its own); and a primary, not
// a standby, where LISTEN fails. It also reads the database's encoding,
// which PostgreSQL reports at startup, and sets the listener's settings
// (listenerSettings).
func (e *Postgres) direct(ctx context.Context, conn *pgconn.PgConn) error {
	q := directSQL
	if e.directSQL != "" {
		q = e.directSQL
	}
	res := conn.ExecParams(ctx, q, nil, nil, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	if len(res.Rows) != 1 || len(res.Rows[0]) != 2 {
		return errors.New("groups: pg_backend_pid() answered no row")
	}
	pid, err := strconv.ParseUint(string(res.Rows[0][0]), 10, 32)
	if err != nil {
		return fmt.Errorf("groups: pg_backend_pid() answered %q", res.Rows[0][0])
	}
	if uint32(pid) != conn.PID() {
		return fmt.Errorf("%w: the server's backend is %d, the connection announced %d", ErrPooledListener, pid, conn.PID())
	}
	if string(res.Rows[0][1]) == "t" {
		return fmt.Errorf("%w: the server at %s is in recovery", ErrStandbyListener, conn.Conn().RemoteAddr())
	}
	enc := conn.ParameterStatus("server_encoding")
	e.recoded.Store(enc != "UTF8" && enc != "SQL_ASCII")
	// The listener's settings, set once the connection is known to reach
	// PostgreSQL itself (a pooler refuses them as startup parameters, and
	// would leave them on a server connection of its own); those this
	// server does not know are left (idle_session_timeout before 14).
	// Otherwise a lock on the table held past 10 seconds, or a quiet
	// spell past the database's idle_session_timeout, cost the listener
	// its connection, and every member a gap, the notifications queued
	// for it lost.
	if e.settingNames == "{}" {
		return nil
	}
	res = conn.ExecParams(ctx, "SELECT pg_catalog.set_config(n, v, false) FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[])) AS s(n, v) "+
		"WHERE pg_catalog.current_setting(n, true) IS NOT NULL", [][]byte{[]byte(e.settingNames), []byte(e.settingValues)}, nil, nil, nil).Read()
	if res.Err != nil {
		return res.Err
	}
	return nil
}

// asciiText reports whether the database's encoding is not UTF-8 (nor
// SQL_ASCII): the layer then sends a body of text other than ASCII in
// base64 (see Layer.envelope).
func (e *Postgres) asciiText() bool { return e.recoded.Load() }

// Transactional reports true: a send inside dbctx.Atomic on the engine's
// pool is a NOTIFY in its transaction, delivered at its commit.
func (e *Postgres) Transactional() bool { return true }

// joinsTx reports whether Publish with ctx runs in ctx's transaction, if
// any: where ctx's scope is of the engine's pool, and not nested in an
// Atomic of another pool. Inside an Atomic of another pool, whose
// connection the NOTIFY cannot join, or around the engine pool's scope,
// whose commit it would not wait for, the layer sends at its commit (see
// txJoiner, dbctx.OnCommit).
func (e *Postgres) joinsTx(ctx context.Context) bool {
	s := dbctx.From(ctx)
	return s == nil || s.Pool() == e.pool && !scopes.AtomicOutside(ctx)
}

// MaxPayload is PostgresOptions.MaxPayload (1 MiB by default), the
// layer's envelope included.
func (e *Postgres) MaxPayload() int { return e.opts.MaxPayload }

// Ready returns nil while the listener is connected, else why not.
func (e *Postgres) Ready() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.state != nil {
		return fmt.Errorf("groups: the PostgreSQL listener is down: %w", e.state)
	}
	return nil
}

// queueUsage returns the last sample of pg_notification_queue_usage(), -1
// before the first.
func (e *Postgres) queueUsage() float64 {
	if !e.sampled.Load() {
		return -1
	}
	return math.Float64frombits(e.usage.Load())
}

// Close stops the listener and returns once it has. It may be called in
// any state: before Start, after a Start that failed, more than once.
func (e *Postgres) Close() error {
	if e.cancel != nil {
		e.cancel()
	}
	if e.done != nil {
		<-e.done
	}
	return nil
}

// Publish NOTIFYs payload to group's channel (through the table past
// NOTIFY's 7,999 bytes), on the scope of the engine's pool that ctx
// carries, in its transaction if any, else on a scope of its own.
func (e *Postgres) Publish(ctx context.Context, group string, payload []byte) error {
	if len(payload) > e.opts.MaxPayload {
		return fmt.Errorf("%w: %d bytes, the engine carries %d", ErrTooLarge, len(payload), e.opts.MaxPayload)
	}
	notify := func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, "SELECT pg_notify($1, $2)", e.channelOf(group), string(payload))
		return err
	}
	if len(payload) > maxNotify {
		notify = func(ctx context.Context, s *dbctx.Scope) error {
			return e.table.publish(ctx, s, e.channelOf(group), group, payload)
		}
	}
	// On the scope of the engine's pool that ctx carries, if any (its
	// connection and transaction), else a scope of its own: never on
	// another pool's scope, whose database the listeners do not hear.
	return e.pool.Do(ctx, notify)
}

// Subscribe LISTENs on group's channel and returns once the listener has
// (see [Engine]).
func (e *Postgres) Subscribe(ctx context.Context, group string) error {
	done := make(chan error, 1)
	e.mu.Lock()
	if e.state == ErrClosed {
		e.mu.Unlock()
		return ErrClosed
	}
	up := e.state == nil
	c := command{channel: e.channelOf(group), listen: true}
	if up {
		c.done = done
	}
	e.push(c)
	e.mu.Unlock()
	if !up {
		return nil // LISTENed on reconnection, after a gap
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		// The LISTEN is queued, and counted once it runs: undone after
		// it, in order, so that nothing is left subscribed for a join
		// that failed.
		e.mu.Lock()
		e.push(command{channel: c.channel})
		e.mu.Unlock()
		return ctx.Err()
	case <-e.ctx.Done():
		return ErrClosed // the listener answers no more
	}
}

// Unsubscribe UNLISTENs group's channel, without waiting.
func (e *Postgres) Unsubscribe(group string) {
	e.mu.Lock()
	e.push(command{channel: e.channelOf(group)})
	e.mu.Unlock()
}

// push queues c for the listener and interrupts its wait. e.mu is held.
func (e *Postgres) push(c command) {
	e.pending = append(e.pending, c)
	if e.interrupt != nil {
		e.interrupt()
	}
}

// listen runs the listener until Close: serves conn, and reconnects
// whenever it breaks.
func (e *Postgres) listen(conn *pgconn.PgConn) {
	defer close(e.done)
	defer e.down(ErrClosed, ErrClosed)
	backoff := minBackoff
	reconnected := false
	refusalLogged := false // in this outage (see refusal)
	for {
		if conn != nil {
			err := e.serve(conn, reconnected)
			if e.ctx.Err() != nil {
				conn.Close(context.Background())
				return
			}
			e.down(err, nil)
			conn.Close(context.Background())
			conn = nil
			e.opts.Logger.Warn("groups: the PostgreSQL listener's connection broke; reconnecting", "err", err)
		}
		select {
		case <-e.ctx.Done():
			return
		case <-time.After(jitter(backoff)):
		}
		ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
		c, err := pgconn.ConnectConfig(ctx, e.cfg)
		if err == nil {
			if err = e.direct(ctx, c); err != nil {
				c.Close(context.Background())
			}
		}
		cancel()
		if err != nil {
			switch {
			case errors.Is(err, ErrPooledListener) && !errors.Is(e.refused, ErrPooledListener):
				e.refused = err
				e.opts.Logger.Error("groups: the PostgreSQL listener reconnected through a pooler; it delivers nothing until it reaches PostgreSQL itself", "err", err)
			case errors.Is(err, ErrStandbyListener) && !errors.Is(e.refused, ErrStandbyListener):
				e.refused = err
				e.opts.Logger.Error("groups: the PostgreSQL listener reconnected to a standby; it delivers nothing until it reaches the primary", "err", err)
			case !refusalLogged:
				if level, ok := refusal(err); ok {
					refusalLogged = true
					e.opts.Logger.Log(context.Background(), level, "groups: the PostgreSQL listener's reconnection was refused; trying again", "err", err)
				}
			}
			e.setState(err)
			backoff = min(2*backoff, maxBackoff)
			continue
		}
		e.refused = nil
		refusalLogged = false
		backoff = minBackoff
		conn, reconnected = c, true
		e.in.Reconnected()
	}
}

// refusal reports whether err, a failed reconnection of the listener's,
// is PostgreSQL's refusal (the server answered, and said why), and the
// level to log it at: ERROR where only an operator can help (the role may
// not log in, its password changed, the database is gone: the listener
// would try forever, and deliver nothing, without a word), WARN where the
// server is starting, stopping or full (53, 57). A network that fails is
// told by the record of the broken connection, and is not logged again.
func refusal(err error) (slog.Level, bool) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		return 0, false
	}
	if strings.HasPrefix(pe.Code, "53") || strings.HasPrefix(pe.Code, "57") {
		return slog.LevelWarn, true
	}
	return slog.LevelError, true
}

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// jitter returns d give or take half.
func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}

func (e *Postgres) setState(err error) {
	e.mu.Lock()
	e.state = err
	e.mu.Unlock()
}

// down marks the engine down with err, and answers the commands queued
// for the listener that a Subscribe waits for, with answer: nil where the
// listener reconnects (they are counted then, and their channels LISTENed
// before the gap that covers the outage, as those of the Joins made while
// down), so that no Join waits for the outage to end, holding the layer's
// subscription lock. The commands stay queued, answered.
func (e *Postgres) down(err, answer error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.state = err
	for i := range e.pending {
		if c := &e.pending[i]; c.done != nil {
			c.done <- answer
			c.done = nil
		}
	}
}

// serve LISTENs on every channel subscribed, those of the commands queued
// while the engine was down included, tells members of a gap after a
// reconnection, then waits for notifications and commands until the
// connection breaks or Close.
func (e *Postgres) serve(conn *pgconn.PgConn, reconnected bool) error {
	// What arrived on a broken connection and was not handed on is
	// covered by the gap below.
	e.notes = nil
	for ch := range e.refs {
		if err := e.exec(conn, "LISTEN "+ch); err != nil {
			return err
		}
	}
	// The commands queued while down (their Subscribe returned at once)
	// are taken as the engine is marked up, and run before the gap: every
	// channel a Join that returned while down asked for is LISTENed before
	// the gap that covers the outage. A Subscribe from now on waits for
	// its command to run.
	e.mu.Lock()
	cmds := e.pending
	e.pending = nil
	e.state = nil
	e.mu.Unlock()
	if err := e.run(conn, cmds); err != nil {
		return err
	}
	if reconnected {
		e.in.Gap(nil)
	}
	sample := time.Time{}
	for {
		e.mu.Lock()
		cmds := e.pending
		e.pending = nil
		e.mu.Unlock()
		if err := e.run(conn, cmds); err != nil {
			return err
		}
		if time.Since(sample) >= e.opts.SampleEvery {
			if err := e.sampleUsage(conn); err != nil {
				return err
			}
			if e.table != nil {
				if err := e.table.cleanup(e.ctx, conn); err != nil {
					return err
				}
			}
			sample = time.Now()
		}
		if err := e.drain(conn); err != nil {
			return err
		}
		if err := e.wait(conn, e.opts.SampleEvery-time.Since(sample)); err != nil {
			return err
		}
	}
}

// run applies cmds in order and answers each one waited for, even where
// its statement failed with the connection: its channel is counted, and
// LISTENed again on reconnection. The commands after a failure go back to
// the front of the queue, for the next connection (down answers them).
func (e *Postgres) run(conn *pgconn.PgConn, cmds []command) error {
	for i, c := range cmds {
		err := e.apply(conn, c)
		if c.done != nil {
			c.done <- nil
		}
		if err != nil {
			e.mu.Lock()
			e.pending = append(cmds[i+1:len(cmds):len(cmds)], e.pending...)
			e.mu.Unlock()
			return err
		}
	}
	return nil
}

// count applies c to the subscription counts and reports whether the
// channel must now be LISTENed (1) or UNLISTENed (-1).
func (e *Postgres) count(c command) int {
	if c.listen {
		e.refs[c.channel]++
		if e.refs[c.channel] == 1 {
			return 1
		}
		return 0
	}
	e.refs[c.channel]--
	if e.refs[c.channel] <= 0 {
		delete(e.refs, c.channel)
		return -1
	}
	return 0
}

func (e *Postgres) apply(conn *pgconn.PgConn, c command) error {
	switch e.count(c) {
	case 1:
		return e.exec(conn, "LISTEN "+c.channel)
	case -1:
		return e.exec(conn, "UNLISTEN "+c.channel)
	}
	return nil
}

func (e *Postgres) exec(conn *pgconn.PgConn, sql string) error {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, sql).ReadAll()
	return err
}

func (e *Postgres) sampleUsage(conn *pgconn.PgConn) error {
	ctx, cancel := context.WithTimeout(e.ctx, 10*time.Second)
	defer cancel()
	res, err := conn.Exec(ctx, "SELECT pg_notification_queue_usage()").ReadAll()
	if err != nil {
		return err
	}
	if len(res) == 1 && len(res[0].Rows) == 1 {
		if f, err := strconv.ParseFloat(string(res[0].Rows[0][0]), 64); err == nil {
			e.usage.Store(math.Float64bits(f))
			e.sampled.Store(true)
		}
	}
	return nil
}

// drain hands on the notifications that arrived, in arrival order, first
// reading the bodies of those that are references: one query for the
// references of a batch. What arrives during that query queues behind the
// batch. An error is the connection's: the rest is covered by the gap of
// the reconnection.
func (e *Postgres) drain(conn *pgconn.PgConn) error {
	for len(e.notes) > 0 {
		n, ids := len(e.notes), []string(nil)
		if e.table != nil {
			n, ids = e.table.batch(e.notes)
		}
		batch := e.notes[:n]
		e.notes = e.notes[n:]
		var bodies map[string][]byte
		unread := false
		if len(ids) > 0 {
			var err error
			if bodies, unread, err = e.table.fetch(e.ctx, conn, ids); err != nil {
				return err
			}
		}
		var missing []string
		for _, p := range batch {
			id, group, ok := parseRef(p)
			if !ok {
				e.in.Deliver([]byte(p))
				continue
			}
			if body, ok := bodies[id]; ok {
				e.in.Deliver(body)
				continue
			}
			e.in.Gap([]string{group})
			missing = append(missing, group)
		}
		if len(missing) > 0 {
			e.missed(missing, unread)
		}
	}
	e.notes = nil
	return nil
}

// wait waits for a notification (OnNotification queues it) for at most
// d, or until a command is pushed or Close. A timeout or an interruption
// keeps the connection: pgconn closes it on other errors only.
func (e *Postgres) wait(conn *pgconn.PgConn, d time.Duration) error {
	ctx, cancel := context.WithTimeout(e.ctx, max(d, time.Millisecond))
	defer cancel()
	e.mu.Lock()
	if len(e.pending) > 0 {
		e.mu.Unlock()
		return nil
	}
	e.interrupt = cancel
	e.mu.Unlock()
	err := conn.WaitForNotification(ctx)
	e.mu.Lock()
	e.interrupt = nil
	e.mu.Unlock()
	switch {
	case err == nil:
		return nil
	case e.ctx.Err() != nil:
		return e.ctx.Err()
	case ctx.Err() != nil && !conn.IsClosed():
		return nil
	}
	return err
}
