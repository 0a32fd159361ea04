package dbctx

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"time"
)

// Options configures a [Pool]. The zero value of every field is a useful
// default; a nil *Options means all defaults.
type Options struct {
	// MaxWorkers is the number of worker slots: how many scopes may hold a
	// connection or run inside Do at once. Default: $DBCTX_MAX_WORKERS, else
	// min(32, runtime.NumCPU()+4), as Channels' ASGI_THREADS.
	MaxWorkers int

	// MaxWaiting bounds the callers queued for a slot; one more gets
	// ErrBusy at once. Default: as many as the slots clear within
	// WaitTimeout when each unit of work holds its slot 10ms,
	// MaxWorkers×WaitTimeout/10ms (200 per slot with the default
	// WaitTimeout): a burst the slots clear in time is queued, not
	// refused. Negative: no queue, a caller that finds every slot taken
	// gets ErrBusy at once.
	//
	// Whatever the bound, while callers queue the pool measures how fast
	// slots are handed on to them, and refuses at once a caller whose turn
	// would come after WaitTimeout at that pace (after three quarters of
	// it: the rest is slack for the pace to vary): under sustained
	// overload the excess is refused when it comes rather than when its
	// wait times out, however long the work holds its slot.
	MaxWaiting int

	// WaitTimeout bounds how long a caller waits for a slot before it gets
	// ErrBusy. Default: 2s.
	WaitTimeout time.Duration

	// ConnectTimeout bounds how long a scope waits for the *sql.DB to
	// give it a connection (a new one connects: dial, TLS, startup) where
	// the caller's context allows longer: past it the scope gets
	// ErrUnavailable, counted and logged as an outage, rather than hold
	// its slot while a host that accepts and never answers (or a
	// firewall that drops) keeps it waiting. pgx's connect_timeout in the
	// connection string bounds each attempt too. Where the pool's probe
	// of the address has found another service there (see
	// [ErrMisconfigured]), units of work do not wait for it: they get
	// ErrMisconfigured at once, and one connect is tried every 30 s
	// until one succeeds. Default: 10s; negative: none.
	ConnectTimeout time.Duration

	// ConnMaxAge is how long a scope may keep its connection pinned across
	// boundaries. It mirrors Django's CONN_MAX_AGE: 0 (the default) gives
	// the connection back at every boundary; negative keeps it until the
	// scope ends.
	ConnMaxAge time.Duration

	// ResetAlways resets the session of every connection given back, not
	// only of those whose scope ran something that may leave session
	// state (see the package doc for what counts). Set it where code the
	// statement text does not name changes session state: a view or a
	// row-level-security policy that calls set_config, a user-defined
	// operator or cast with side effects. On pgx's driver the reset goes
	// out with the connection's next statement and costs no round trip
	// of its own; on another driver it costs one per scope. Default: false.
	ResetAlways bool

	// PlainWrites says that the code the schema runs for a write (its
	// tables' triggers and rules, the functions of their defaults,
	// checks and index expressions, the views written through) leaves no
	// session state: no set_config(…, false) or SET, no session advisory
	// lock, no temporary table, no LISTEN, no PREPARE. The classifier
	// cannot see that code, so by default every INSERT, UPDATE and DELETE
	// makes its scope dirty, and the connection's next user pays the
	// whole reset (the sweep's check, [DefaultResetSQL]'s seven
	// statements): on a write workload, about as much of PostgreSQL's
	// time as the write itself. With PlainWrites a write whose text is
	// otherwise clean (one statement, no other write in it, no function
	// but the harmless built-ins, nextval and setval) leaves only its
	// sequence values, and the reset owed is DISCARD SEQUENCES alone
	// (Stats.SequenceResets), in the same round trip as the next
	// statement. A schema whose trigger does set a session setting, say,
	// then leaks it to the next scope on that connection: set it only
	// where the schema's code is known. It changes nothing under
	// TransactionPooling, which resets nothing, nor with ResetAlways; on
	// another driver than pgx's, the whole reset is still run. Default:
	// false.
	PlainWrites bool

	// ResetSQL is what resets the session of a dirty connection, one or
	// more statements (on pgx's driver they are sent one by one, in a
	// transaction of their own or, after code ran, in cache_statement
	// mode, in the implicit transaction of the statement after them, see
	// the package doc: none may refuse to run in a transaction block).
	// Default: [DefaultResetSQL]. Where the scope ran code that
	// may have PREPAREd statements in SQL (see the package doc), a DO
	// block of PL/pgSQL then deallocates them; under pgx the
	// notifications left unread are dropped.
	ResetSQL string

	// OnAcquire runs when a scope pins a connection, before user code sees
	// it, after the reset the connection's last user left owed: set
	// per-scope state here that a [Setting] cannot express. Its error
	// discards the connection and is returned to the caller; where the
	// caller's context ended meanwhile, the error says so (errors.Is
	// finds the context's error), whatever the driver made of it, and the
	// discard is counted as Stats.Discarded.Canceled. What it runs
	// is not seen: the scope is dirty, and its session reset afterwards.
	// It may run more than once for one scope: again on another
	// connection when the one it ran on turns out dead, and when a
	// statement is retried on a fresh connection. Keep it to setting
	// session state. For a tenant, declare a [Setting] instead: it costs
	// no round trip and no reset, and works behind PgBouncer.
	OnAcquire func(ctx context.Context, conn *sql.Conn) error

	// OnRelease runs before a connection is given back (to the *sql.DB,
	// or kept by the pool for the next scope), after any open transaction
	// was rolled back; the session is then reset (see ResetSQL), so what
	// OnRelease itself sets does not leak either. Its error discards the
	// connection; it is logged and counted (Stats.Discarded.Hook), not
	// returned as the outcome of the work.
	OnRelease func(ctx context.Context, conn *sql.Conn) error

	// OnBegin runs right after a scope begins a transaction (the outermost
	// [Atomic], [Scope.BeginTx]), before the transaction's first
	// statement: set transaction-local state here, through the scope s,
	// whose statements are part of the transaction. With it, Atomic's
	// BEGIN goes out alone, not with its first statement. For a tenant,
	// declare a [Setting] instead, which needs neither. Its error ends the
	// transaction (rolled back) and is returned, wrapped, by BeginTx, or
	// by every statement of that Atomic, whose commit then fails too.
	// While it runs, statements of the unit's other goroutines on the
	// scope wait for it to return, so that they run after what it sets;
	// its own pass: those of its goroutine, whatever their context, and
	// those of goroutines it starts, where they run with ctx or a context
	// derived from it (else they wait for it too).
	OnBegin func(ctx context.Context, s *Scope) error

	// OnWait, OnPin and OnDo let a tracer or a meter see the pool at
	// work (package dbotel sets them for OpenTelemetry; see [Wait],
	// [Pin]). Each runs on the goroutine of the unit of work, with its
	// context, and holds it up while it runs: it must not block. Unset,
	// each costs one nil check. A panic in OnWait, OnPin or OnDo (or
	// OnDo's done) is logged and the unit of work goes on; in OnAcquire,
	// OnBegin or OnRelease it is the hook's error (a *[PanicError] naming
	// it).
	//
	// OnWait is told of each caller that did not find a worker slot free:
	// when its wait ends (the slot granted, the wait timed out, its
	// context ended, the pool closed), or when it is refused at once
	// with ErrBusy. A caller that finds a slot free is not told of.
	OnWait func(ctx context.Context, w Wait)

	// OnPin is told of each connection a scope pins, once it is ready
	// for the statement that asked for it (health check, OnAcquire and
	// what was found dead on the way included), and of each pin that
	// failed. ctx is that statement's.
	OnPin func(ctx context.Context, p Pin)

	// OnDo runs at the start of each [Do] that runs on a scope of its
	// own (not one that reuses the scope ctx carries): fn gets the
	// context it returns, which must be ctx or derived from it (a span
	// added), and done, if not nil, is called with Do's outcome once
	// the scope has ended, its connection given back (an error that says
	// so where fn ended its goroutine with runtime.Goexit).
	OnDo func(ctx context.Context) (_ context.Context, done func(err error))

	// TransactionPooling declares that the *sql.DB reaches PostgreSQL
	// through a pooler in transaction mode (PgBouncer's pool_mode =
	// transaction), which hands each transaction to whichever server
	// connection is free: session-level state set on one goes to another
	// client next, and is not there for the scope's next transaction.
	// Then the settings a unit of work declares ([Setting]) are applied
	// transaction-locally, with every statement outside a transaction and
	// once in each transaction; statements that set session-level state
	// visibly (see the package doc, "Behind PgBouncer") fail with
	// [ErrSessionState] before they run, as does PrepareContext; the
	// session reset, which could only reach some other server connection,
	// is not run; and pgx's default exec mode, which prepares statements on
	// the server, is warned about once. It cannot be combined with
	// OnAcquire (declare a Setting) or ResetAlways: New panics. Default:
	// false.
	TransactionPooling bool

	// LeakTimeout, when positive, logs once through Logger any scope that
	// keeps a connection pinned longer than this, with the stack where it
	// was pinned. Default: 0, off (capturing the stack costs about 1µs per
	// pin).
	LeakTimeout time.Duration

	// Logger receives warnings, leak reports and misconfigurations (at
	// ERROR, once per cause: see [ErrMisconfigured]). The warnings that
	// come once per connection, per failed connect or per unit of work
	// refused (a session reset that failed as the server went away, a
	// connect refused during an outage, [ErrBusy]) are aggregated: the first of a burst is logged at once, the
	// others each 10 seconds as one record with their count
	// ("repeated") and the attributes of the first held back, its "err"
	// included. Default: slog.Default().
	Logger *slog.Logger
}

// DefaultResetSQL resets what a session can carry over to the next user of
// its connection: the session user and role (SET
// SESSION AUTHORIZATION DEFAULT resets both; RESET ALL touches neither),
// every other setting, cursors held open, listened channels, session
// advisory locks, temporary tables and other objects of pg_temp, and the
// sequence state of currval and lastval. Statements PREPAREd in SQL are
// deallocated too where needed (see [Options.ResetSQL]).
// DISCARD ALL is not used: it would also drop the statements pgx
// prepares and caches through the protocol.
//
// What it cannot undo: a library LOADed, the seed of random() set by
// setseed (a scope that runs either has its connection closed instead),
// and a custom setting that was never defined before (app.tenant) exists
// afterwards with an empty value, where a fresh session has none:
// current_setting('app.tenant', true) is the empty string rather than
// NULL, so treat both alike (with nullif). Nor the local buffers a
// session's first use of a temporary table allocates (ON COMMIT DROP
// too): temp_buffers cannot be changed on the connection afterwards, so
// a later scope's SET [LOCAL] temp_buffers fails there (22023, invalid
// value) where on a fresh session it works; and pg_my_temp_schema(),
// current_schemas(true) name the emptied temporary schema. Where a unit
// sets temp_buffers, set it in the connection string.
const DefaultResetSQL = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; " +
	"SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES"

// defaultConnectTimeout is Options.ConnectTimeout's default: pgx's and
// libpq's own is none.
const defaultConnectTimeout = 10 * time.Second

// assumedHold is how long a unit of work is taken to hold its slot for
// the default MaxWaiting: a request or a message of a few statements.
const assumedHold = 10 * time.Millisecond

// envMaxWorkers names the environment variable read for the default
// [Options.MaxWorkers].
const envMaxWorkers = "DBCTX_MAX_WORKERS"

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.MaxWorkers < 0 {
		panic("dbctx: New expects MaxWorkers >= 0")
	}
	if c.WaitTimeout < 0 {
		panic("dbctx: New expects WaitTimeout >= 0")
	}
	if c.LeakTimeout < 0 {
		panic("dbctx: New expects LeakTimeout >= 0")
	}
	if c.TransactionPooling && c.OnAcquire != nil {
		panic("dbctx: New: OnAcquire sets session state, which transaction pooling hands to other clients; declare a Setting, or set it per transaction in OnBegin")
	}
	if c.TransactionPooling && c.ResetAlways {
		panic("dbctx: New: ResetAlways cannot reset sessions behind transaction pooling, where each transaction may run on another server connection")
	}
	if c.MaxWorkers == 0 {
		c.MaxWorkers = defaultMaxWorkers()
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 2 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	switch {
	case c.MaxWaiting == 0:
		c.MaxWaiting = c.MaxWorkers * max(1, int(c.WaitTimeout/assumedHold))
	case c.MaxWaiting < 0:
		c.MaxWaiting = 0
	}
	if c.ResetSQL == "" {
		c.ResetSQL = DefaultResetSQL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func defaultMaxWorkers() int {
	if v := os.Getenv(envMaxWorkers); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			panic(fmt.Sprintf("dbctx: %s=%q, want a positive integer", envMaxWorkers, v))
		}
		return n
	}
	return min(32, runtime.NumCPU()+4)
}
