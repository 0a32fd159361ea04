// Package dbctx gives Go code connection-scoped database handles with the
// discipline Django Channels gives Python: database work runs in a bounded
// number of worker slots, and connections are checked and cleaned up at
// every boundary, so long-lived requests and sockets never leak, pin or
// reuse a broken connection, and nothing one unit of work leaves in a
// session reaches the next.
//
// A [Pool] wraps one *sql.DB (pgx's stdlib driver gets the most out of it)
// and owns the worker slots. A [Scope], carried in a context, is a unit of
// work's handle: it takes a slot and a connection on first use and keeps
// them until a boundary. Sync code (a request's handler, a sync websocket
// callback) queries through [From](ctx); async code (an async websocket
// callback, a background job) through [Do], which runs a function in a
// slot. A boundary (the end of a request or a websocket message, the entry
// and exit of [Do], [CloseOld]) discards a connection that is unusable and
// gives back one that is obsolete per [Options.ConnMaxAge] (with the
// default 0, every one), its open transaction rolled back. Packages
// middleware and wsconsumer put a scope on every request and socket.
//
// The pool takes the *sql.DB's connections to be as it left them: code
// that uses the same *sql.DB directly (db.Conn, db.ExecContext) and leaves
// session state behind (a session-level set_config, SET, a temporary
// table) hands that state to the pool's next scope on the connection, a
// tenant included to a unit that declares none. Give the pool a *sql.DB
// of its own, or run such code through a scope.
//
//	pool := dbctx.New(db, nil) // db: sql.Open("pgx", url)
//	err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
//		return s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", id).Scan(&name)
//	})
//
// A Scope is the DBTX of sqlc in both of its modes: database/sql's
// (ExecContext, QueryContext, QueryRowContext, PrepareContext) and pgx's
// native one (Exec, Query, QueryRow, CopyFrom, SendBatch: sql_package
// "pgx/v5"); on pgx's driver both run through pgx, with the same
// discipline. The examples are the best way to learn the API.
//
// Past the slots, callers queue, first come first served, up to
// [Options.MaxWaiting] for at most [Options.WaitTimeout], then get
// [ErrBusy]: overload is refused, never queued without bound. (Where units
// declare settings, a slot given back may go to one of the next three
// callers behind the head, when a connection kept between scopes carries
// that caller's values and none carries the head's: it then sends no
// set_config. No caller is passed over more than twice.) A caller
// whose turn would come too late at the pace the queue moves is refused at
// once. A connect that fails says why: [ErrUnavailable] is an outage that
// passes by itself (come back later), [ErrMisconfigured] what no retry
// fixes (a missing database or role, a wrong password, an unknown host:
// logged at ERROR once per cause).
//
// Before a connection is used it is checked without a round trip (a look
// at its socket), so a backend killed while idle costs no failed
// statement. A connection given back is kept a moment for the pool's next
// scope, which under load takes it without database/sql's check-out; it
// goes back to the *sql.DB soon after, so that database/sql's own limits
// (SetConnMaxLifetime, SetConnMaxIdleTime) still apply.
//
// A statement is canceled when its context ends, as with database/sql: it
// returns the context's error, and the connection is closed (pgx asks the
// server to cancel the statement) and discarded. Outside a transaction
// the statement may have run and committed before the cancel reached the
// server: the context's error does not say it did not (inside [Atomic]
// it does: nothing commits). Statements whose context
// is the scope's own (a request's, a socket's) are watched once per scope
// rather than once per statement.
//
// # Settings and tenancy
//
// A unit of work declares the run-time parameters all its statements run
// with ([NewSetting], [Setting.With]): the tenant that row-level-security
// policies read, a statement_timeout, a role. The usual multi-tenant setup:
//
//	-- as the table's owner, once; the service connects as a role
//	-- without BYPASSRLS (a superuser bypasses every policy)
//	ALTER TABLE items ENABLE ROW LEVEL SECURITY;
//	ALTER TABLE items FORCE ROW LEVEL SECURITY;
//	CREATE POLICY tenant_rows ON items
//		USING (tenant = current_setting('app.tenant', true));
//
//	var tenant = dbctx.NewSetting("app.tenant")
//
//	// An HTTP middleware after authentication, inside or outside middleware.DB:
//	next.ServeHTTP(w, r.WithContext(tenant.With(r.Context(), user.Tenant)))
//
//	// A websocket's Connect, for the socket's life (its messages and group events):
//	s.AddValues(func(ctx context.Context) context.Context { return tenant.With(ctx, t) })
//
// Every statement run with such a context — through the Scope's methods
// of either interface, inside and outside transactions, in batches, COPY,
// [Scope.Conn] and [Scope.Pgx], a statement retried on a fresh connection,
// [Do], both consumer styles and their group events — runs with exactly
// the values its context declares and no other unit's. The values are sent
// as parameters of set_config, in the same network round trip as the
// statement, and only where the session does not carry them already (of
// the connections kept between scopes, a scope takes one that carries its
// values, where there is one: many tenants over a few connections mostly
// find their own); if they fail, the statement does not run. Outside a transaction they are
// set for the session and cleared, or replaced, in the first round trip of
// the connection's next user, or before it goes back to the *sql.DB;
// inside one (and behind PgBouncer always) for the transaction only. They
// make no scope dirty. A few statements cannot share their round trip
// (several statements in one string, DO, CALL, VACUUM and the like, COPY,
// and raw access, [Scope.Conn] and [Scope.Pgx], whose statements the
// scope does not send): there the settings go in a round trip of their
// own, where the session does not carry them already (after raw access,
// whose connection is discarded, the next unit's never does), or, behind PgBouncer
// outside a transaction, the statement is refused with [ErrSessionState]
// (run it inside [Atomic]). [Scope.BeginTx] applies them after its BEGIN,
// in one more round trip where needed (the *sql.Tx's statements, which
// the scope does not see, run with those applied last: BeginTx's context's,
// unless a statement through the scope in the transaction declared
// others); once the *sql.Tx ends (Commit, Rollback, the end of its
// context), the scope's statements get theirs outside it again, on every
// driver (on another, the scope asks database/sql whether it ended,
// without a round trip; while it is open, where SQL run in it may have
// ended its transaction unseen, they go at session level, which holds
// either way, before every statement of the scope). Since the statements
// of such a *sql.Tx, and those of a *sql.Stmt of [Scope.PrepareContext],
// may change the settings at any time (SET LOCAL, set_config, ROLLBACK TO
// SAVEPOINT), once one is handed out every statement of the scope applies
// its own again. [Atomic] sends its BEGIN and them with its first
// statement. Inside a transaction, a rollback to a savepoint (a
// nested Atomic that fails, or ROLLBACK TO in SQL) puts back the values
// the transaction had before it, so the next statement gets its own again,
// as it does after SQL of the unit's own that sets one of them (SET, SET
// LOCAL, set_config, a function). A transaction begun and ended in SQL
// (BEGIN … COMMIT, ROLLBACK, AND CHAIN) is followed as the server reports
// it (on another driver, as the text says): the statements in it, and
// those after it, each get the settings. A statement whose error is the
// client's (a Scan into the wrong type) after the server ran it and the
// settings before it leaves the session's values unknown: the next
// statement applies every one of them again;
// a batch, or a string of several statements, that ends its transaction
// or rolls back to a savepoint before another of its statements is
// refused, before anything is sent, where settings are in play, since
// that statement would run without them: run it on its own. In pgx's cache_statement mode on a direct
// connection, what dbscope sends before a statement, and the statement
// with it, are prepared on the connection under names of dbscope's
// (dbscope_N), as pgx prepares its own: PostgreSQL parses and plans them
// once per connection. Code can replace them (DEALLOCATE dbscope_N, then
// PREPARE dbscope_N AS SELECT, in SQL): the check before a reset, for
// statements PREPAREd in SQL, finds such replacements and sends the reset
// unnamed, and after code other than a DML statement's own (DO, CALL, a
// function) the check itself goes unnamed (and a batch, whose statements
// pgx binds by the names of its own cache, sends what is owed alone
// first); after DML alone it stays named,
// so a trigger written to replace dbscope's statements is not guarded
// against.
//
// [Options.OnAcquire] and [Options.OnBegin] remain for what is not a
// setting: state that needs SQL of your own, or a driver other than pgx's.
// OnAcquire's statements make every scope dirty, and it is refused behind
// PgBouncer; OnBegin runs in every transaction a scope begins, and costs
// its own round trips.
//
// # Concurrency
//
// A Scope is safe for concurrent use, as database/sql's *sql.Conn is: the
// goroutines of one unit of work (an errgroup in a handler, goroutines of
// a callback) share its one connection, and their statements run on it one
// after another (while [Options.OnBegin] runs for a transaction one of
// them began, the others' wait for it). QueryRowContext and QueryRow read their row before they
// return and hold nothing; rows from QueryContext, Query and SendBatch
// hold the connection until they are closed or read to the end, and a
// statement meanwhile fails at once with [ErrConnBusy]; so does an
// [Atomic] that ends with rows of its transaction open, which loses the
// transaction with the connection (the scope's statements then fail with
// [ErrSessionLost] until its boundary). A statement of the scope while
// rows of what it handed out (a *sql.Tx's, the raw connection's) are open
// fails with ErrConnBusy too; a *sql.Tx still open at the boundary with
// its rows open is ended there (on pgx's driver its connection closed,
// and a warning logged). What the scope hands out (a
// *sql.Tx of [Scope.BeginTx], a *sql.Stmt of [Scope.PrepareContext], the
// connection of [Scope.Conn] and [Scope.Pgx]) may be used on other
// goroutines alongside the scope's own statements: database/sql and pgx
// drive the connection under its lock, and the scope reads the
// connection's state under it too while such handles are out. When the
// context given to BeginTx ends, the scope rolls the transaction back
// between its own statements (database/sql would do it on a goroutine of
// its own, and pgx, failing that rollback under the ended context, would
// close the connection under the scope). Rows that a boundary closes
// before they were read to the end report it from Err, rather than read
// as exhausted. Boundaries
// ([Scope.End], [CloseOld]) must not run while other goroutines still use
// the scope, and nested [Atomic] calls belong on one goroutine: a nested
// Atomic is a savepoint of the one transaction, and a rollback to it undoes
// whatever ran after it began, including other goroutines' statements that
// have already reported success. So does the rollback of an Atomic, or
// of a *sql.Tx of BeginTx: while its transaction is open, every statement
// of the scope runs in it, whichever goroutine sends it and with whatever
// context: a write that must stand on its own must wait for it to end.
//
// On another driver than pgx's (lib/pq, or one that wraps pgx's to
// instrument database/sql) the scope's rows are its own too, and hold the
// connection as above. database/sql reads a driver's rows a row at a
// time, locking the connection for each only, so where the scope has
// handed out a *sql.Tx, *sql.Stmt or its *sql.Conn the rows are read to
// the end before QueryContext returns; a statement of those handles on
// another goroutine while the scope reads can still reach the driver
// between two rows, which pgx's driver alone is safe from. While a
// *sql.Tx of BeginTx is open, the scope's statements, and their settings,
// run in it through the *sql.Tx (database/sql would otherwise close the
// *sql.Conn under it on a busy connection, and wait for it to end): one
// while rows of the *sql.Tx are open is refused by the driver, and fails
// with ErrConnBusy; but pgx's stdlib, under a wrapping driver, then
// fails those rows too, and the connection, which is discarded at the
// boundary: close a *sql.Tx's rows before the scope's next statement.
// The statement retry trusts such a driver's driver.ErrBadConn to mean
// that nothing was sent, as database/sql's contract says; pgx's stdlib,
// under a wrapping driver, also returns it for a connection that failed
// while the answer to a statement sent in the simple protocol (an Exec
// with no arguments) was read, after the server may have committed it:
// there, such a write may run twice where pgx's driver itself returns
// [ErrCommitUnknown]. A statement outside a transaction whose error is
// the network's (no SQLSTATE, not driver.ErrBadConn) on a connection
// that then fails a ping is [ErrCommitUnknown] on such a driver too.
//
// # Several pools
//
// A context may carry a scope of each of several pools (a primary and a
// read replica, two databases): [Pool.From] finds each pool's, [From] the
// innermost (the one attached last). Each has its own slots, connection and
// boundaries: [Pool.Do] and [Pool.CloseOld] run those of their own pool
// alone, [CloseOld] those of every pool's scope in the context, and a panic
// in a Do discards every pinned connection of the unit of work that is not
// inside a Do or Atomic of its own. [Async] makes every pool's scope refuse
// direct use.
//
// # Tracing and metrics
//
// [Options.OnWait], [Options.OnPin] and [Options.OnDo] tell a tracer or a
// meter what a unit of work waited for and what it pinned, and let it
// give a [Do] with no span a span of its own; a pgx tracer on the
// connections' config (pgx.ConnConfig.Tracer) is told of every statement
// of a scope once, and [PreludeOf] tells it what dbscope sent before the
// statement (a reset owed, Atomic's BEGIN, the settings of [Setting]).
// Package github.com/dbscope/dbscope/dbotel builds OpenTelemetry's spans
// and metrics on them.
//
// # Session isolation
//
// No session state of one scope reaches the next scope that gets the same
// physical connection: no setting (tenant, search_path, role, session
// authorization, time zone…), advisory lock, temporary table or function,
// listened channel or unread notification, cursor, statement PREPAREd in
// SQL, or sequence state (currval, lastval). A connection is given back
// in one of four ways:
//
//   - clean, as it was pinned: nothing to do;
//   - dirty: [Options.ResetSQL] ([DefaultResetSQL]) is owed, and, where the
//     scope ran code the lexer does not know (DML, whose triggers run code;
//     a function other than a built-in; DO, CALL, PREPARE, EXECUTE), the
//     deallocation of the statements PREPAREd in SQL. On pgx's driver the
//     connection's next user pays it, sent before its first statement in
//     the same round trip, or the pool pays it before the connection goes
//     back to the *sql.DB: a reset costs no round trip of its own. (The
//     deallocation is first a check that no such statement exists; where
//     one does, the round trip goes again with the deallocation. It also
//     counts the statements pgx and dbscope keep prepared: see below.) Where
//     that check goes first as a statement prepared on the connection
//     (pgx's cache_statement mode) and finds the session listening on no
//     channel either, the reset shares the statement's implicit
//     transaction: it commits with it, or rolls back with it and is owed
//     still. Otherwise
//     it has a transaction of its own in the round trip (UNLISTEN takes
//     effect at commit; Atomic's rollback must not undo it). The check
//     reads pg_prepared_statements,
//     whose cost grows with the statements prepared on the connection,
//     pgx's cached ones included: about 10 µs of server time with few,
//     50–80 µs with 100, 0.7–0.9 ms with 512, the default
//     statement_cache_capacity of pgx's cache_statement mode. A service
//     of many distinct statements that writes often keeps that cache
//     smaller, or runs in cache_describe mode, where pgx names no
//     statement on the server. On another driver it runs before the
//     connection is given back;
//   - handed to user code as itself ([Scope.Conn], [Scope.Pgx], the
//     *pgx.Conn of rows' Conn and of a batch's Tx): discarded, so that
//     whatever user code kept of it fails from then on and reaches no
//     other scope (Stats.Discarded.Raw);
//   - holding what no reset undoes (LOAD, DISCARD ALL or DEALLOCATE ALL,
//     which would leave pgx's statement cache pointing at nothing,
//     setseed and the seed setting), or a client_encoding other than the
//     one it began with (pgx's UTF8), under which pgx's simple protocol
//     would send nothing, the reset included: closed, counted in
//     Stats.Discarded.Unresettable.
//
// A scope that changed how names resolve, by its text (a search_path, a
// role, SET LOCAL and set_config(…, true) included, or a temporary
// object), also has the statements the connection keeps prepared
// dropped at its boundary, pgx's and dbscope's, with the descriptions
// they keep (pgx's DeallocateAll: one round trip, on that path alone):
// one prepared or described under it would otherwise, in the next scope,
// read the next scope's tables as PostgreSQL re-parses it, and fail
// where their shape differs. So does a scope that set, by its text in
// any of those forms (RESET and an UPDATE of pg_settings too), a setting
// that may change how PostgreSQL reads a statement's text or constants,
// or what its plan folds: DateStyle, IntervalStyle, TimeZone,
// transform_null_equals, standard_conforming_strings, extra_float_digits…,
// any setting but a custom one (app.tenant), the timeouts, the resource
// settings (work_mem…), the planner's (enable_*, random_page_cost…),
// application_name and the like: a statement pgx kept prepared would run
// in the next scope as parsed under it (a date read day first, a
// timestamptz literal in another time zone, v = NULL read as v IS NULL),
// though the reset puts the setting back. They are dropped too before
// the scope's next statement after such a text (one more round trip): a
// statement pgx prepared earlier, in an earlier scope or this one, would
// otherwise run as read then, not under the scope's DateStyle, nor
// reaching its new temporary table. (The drop is pgx's, DEALLOCATE ALL:
// statements the scope PREPAREd in SQL before such a text are dropped
// with it, and an EXECUTE of one after it fails with 26000; PREPARE them
// after the search_path or setting is in place.) Where the scope also ran code (a
// PL/pgSQL function), PostgreSQL's plans of that code are dropped too
// (DISCARD PLANS). Settings declared with [NewSetting] are not read so
// (see there). A statement whose result type changed since
// it was prepared (a table another session altered, a search_path set by
// code the text does not show) is prepared again and run again, once,
// outside a transaction, where PostgreSQL's refusal reaches the scope
// before the statement returns (an Exec, a query that carries what the
// connection owes). Where the refusal comes with the rows, or in a
// transaction, the statement fails (SQLSTATE 0A000, "cached plan must
// not change result type"), as on pgx alone, and is prepared anew the
// next time. Code of the user's (DO, a function, CALL) may deallocate
// the statements pgx and dbscope keep prepared on the connection
// (EXECUTE 'DEALLOCATE ALL'): the reset's check, which such code makes
// owed, also counts them, and where fewer exist on the server than pgx's
// cache and dbscope's hold, both are dropped (pgx's DeallocateAll: one
// round trip, on that path alone) before the next scope's first
// statement, whatever path runs it (a batch, a *sql.Tx, [Scope.Pgx],
// [Atomic]). In the scope that ran the code, a statement so deallocated
// is refused at its Bind (SQLSTATE 26000) before it runs, and is
// prepared again and run again, once, under the same rules as one whose
// result type changed: in a transaction ([Atomic], [Scope.BeginTx]'s), in
// a batch or through [Scope.Pgx], it fails, once, as on pgx alone. The
// same errors raised inside code the statement ran (a view's function, a
// trigger's that EXECUTEs a statement gone) came after that code's work,
// and are returned: the statement is not run again. On another driver
// than pgx's, what the driver keeps prepared is not dropped.
//
// What makes a scope dirty is decided without a round trip, erring toward
// dirty. Every statement run through the scope's methods is read by a lexer
// that reads SQL as PostgreSQL does (comments, several statements in one
// string, strings written '…', E'…', U&'…', dollar-quoted or continued on
// the next line, identifiers written "…" or U&"…"), whatever the session's
// standard_conforming_strings (a text with a backslash is read both ways,
// as a statement before it in its transaction may have switched it), and
// that tells names from keywords where PostgreSQL's grammar does (SET
// local.tenant sets a setting named local.tenant; PREPARE transaction AS …
// prepares a statement). A statement is clean only if it is of a kind that
// leaves nothing (SELECT, VALUES, TABLE, WITH, SHOW, DECLARE without HOLD,
// FETCH, MOVE, CLOSE, LOCK, NOTIFY, transaction control, SET LOCAL, SET
// TRANSACTION, SET CONSTRAINTS; EXPLAIN, which plans its statement, but
// with ANALYZE in any spelling runs it and is that statement's kind),
// writes nothing (INSERT, UPDATE, DELETE and MERGE take sequence values and
// fire triggers; SELECT INTO, pg_temp) and calls only built-in functions
// that leave nothing: the pg_catalog functions PostgreSQL marks immutable
// or stable, and a few volatile ones (clocks, random, gen_random_uuid,
// pg_sleep, pg_notify, transaction-level advisory locks, currval and
// lastval, which only read); set_config only as set_config(…, …, true).
// Everything else is dirty: SET, RESET, LISTEN, PREPARE, EXECUTE, DDL (it
// may evaluate expressions and fire event triggers), DO, CALL, COPY FROM
// (triggers, defaults, sequences, as INSERT), a call of any other
// function (user code may call set_config, take an advisory lock, create a
// temporary table), any statement the lexer does not know, and a
// statement given a pgx.QueryRewriter other than pgx's named arguments
// (the text that runs is not the text read). A scope is dirty too when it
// ran what it cannot see: a *sql.Tx from [Scope.BeginTx], a statement
// prepared with [Scope.PrepareContext], [Options.OnAcquire],
// [Options.OnRelease]. And at every give-back the session user, which the
// server reports whenever it changes, is compared with the one the
// connection first reported: a change the text did not show makes it
// dirty. The settings a unit of work declares ([Setting]) make nothing
// dirty: dbscope applied them, and knows them.
//
// Writes: an INSERT, UPDATE or DELETE may take sequence values and runs
// its table's code (triggers, rules, the functions of defaults, checks and
// index expressions), which the text does not show, so every write makes
// its scope dirty and pays the whole reset. Where the schema's code is
// known to leave no session state, [Options.PlainWrites] says so: a write
// whose text is otherwise clean then owes DISCARD SEQUENCES alone, one
// statement in the next user's round trip (Stats.SequenceResets); the
// settings dbscope applied stay applied. (Asking the catalog after each
// write whether its table runs code was tried: exact, but dearer to
// PostgreSQL than the reset it spares; bench/README.md, "Writes".)
//
// PostgreSQL is the judge of this reading: TestCorpusOracle runs
// PostgreSQL's own regression SQL, and mutants of it along the axes of
// its grammar (keywords in every name position, statements inside EXPLAIN
// ANALYZE, PREPARE and EXECUTE, CREATE … AS, DO and rules, case, quotes
// and comments, standard_conforming_strings switched before them), and
// asks PostgreSQL after each whether the session changed; a statement that
// changed it and was read as clean fails the test.
//
// Not seen: session state changed by code PostgreSQL runs for a statement
// without its text naming it: a view's or a row-level-security policy's
// functions, a user-defined operator, cast or type input function, a
// domain's CHECK, a function called in attribute notation (t.f or (x).f
// for f(x), x of any type; but the built-ins of session advisory locks,
// sequences, the seed and what no reset undoes are told by name there,
// but currval after a name, t.currval, a column of t),
// a user function that overloads a built-in's name for argument types
// the built-in does not take as they are (its own types, or lower(varchar)
// where the built-in is lower(text)), or for any, where a search_path set
// for the role or database puts pg_catalog after a schema of the user's.
// (A search_path the unit sets so, in its text or declared, makes every
// statement after it count as code; one in pgx's connection string, as a
// parameter or in options, every statement of the pool, logged once.) A library that the first call of one
// of its C functions loads stays loaded, with the settings it defines
// (LOAD, fmgr_c_validator and a CREATE of a function of LANGUAGE C,
// whose validator loads it, CREATE or ALTER EXTENSION, whose script's
// do, cost the connection). (A change of session
// user there is still caught, by the
// parameter the server reports; a SET ROLE is not.) Where a schema has such
// code, set [Options.ResetAlways]. Nor what planning runs that the text
// does not name: EXPLAIN without ANALYZE counts the functions it names, as
// planning may fold them, but not an immutable function of a column's
// default or a view's. A reset also cannot remove a custom setting it
// resets: where a fresh session has no app.tenant, a reset one has it set
// to the empty string (see [DefaultResetSQL]). Nor what an extension's
// code keeps per session without a function the text names: a foreign
// table of postgres_fdw read leaves its connection to the remote server
// cached in the session. Nor a PL/pgSQL function compiled under a
// scope's plpgsql.variable_conflict, or its standard_conforming_strings:
// PostgreSQL keeps it compiled for the session, and nothing short of
// DISCARD ALL, which would drop pgx's statements too, undoes it (its
// plans, read under a DateStyle or a TimeZone, are dropped: DISCARD
// PLANS). Nor a text in BIG5, on a server whose encoding is EUC_TW or
// MULE_INTERNAL, whose conversion from BIG5 takes a quote or a newline
// into a character after most of BIG5's first bytes: the classifier
// reads the client-only encodings as PostgreSQL splits them, but does not
// know the server's. Nor transaction defaults
// (default_transaction_read_only, …) that such code set: the reset undoes
// them, but the next scope's first statement may share the reset's
// transaction, begun under them, and be described before it, under the
// settings such code set (those a SET or set_config in the text sets are
// seen: the reset then takes a transaction of its own, and goes before a
// statement not yet described on the connection). (In pgx's simple
// protocol pgx puts the arguments into the text where its own reading of
// quotes finds placeholders, which is not PostgreSQL's: a statement with
// arguments where pgx's reading finds a placeholder that PostgreSQL
// reads inside a string, a comment or a name (pgx reads E'…' after any
// word ending in e, and a dollar quote inside a name) is taken for one of
// unknown kind, since an argument put there may end the string and run;
// a $ and a digit in a string both read alike, '$5 off', costs nothing.)
// What no
// reset undoes (setseed or the seed setting, dblink_connect, a temporary
// replication slot made or copied, pg_replication_origin_session_setup, a
// backup started) is told by the function's name in any schema, or the
// setting's, and costs the connection; a function whose name is written
// U&"…" is taken for one, and so is a set_config whose setting's name is
// computed or an argument (set_config($1, …)), and TREAT(… AS name),
// which calls the function of the type's name, and an UPDATE of the view
// pg_settings, whose rule calls set_config(name, setting, false) for the
// names its WHERE picks. Behind PgBouncer, what is
// not refused is listed below.
//
// # Retry
//
// A statement is run again on another connection only when its failure
// proves it had no effect and the other connection lacks nothing it
// needs: it is the first statement since the connection was pinned (the
// other gets OnAcquire first, and the settings of the statement's
// context), outside a transaction (or the first of an [Atomic], whose
// BEGIN goes out with it), and either nothing was sent or the server ended
// the session (class 57P, which rolls back the statement's transaction)
// while the statement was one that cannot commit partway (not CALL, DO,
// several statements in one string, or a statement that works outside
// transactions, such as VACUUM). Effects that PostgreSQL does not roll
// back (a sequence value taken, a dblink call) are the caller's to make
// idempotent. Once anything has run on the connection, a lost session
// fails the statement with [ErrSessionLost], and the scope's later
// statements too, until the next boundary: never run on a fresh session
// without what the earlier ones set.
//
// # Behind PgBouncer
//
// Many instances of a service share PostgreSQL through PgBouncer in
// transaction pooling mode (pool_mode = transaction), which runs every
// transaction, and every statement outside one, on whichever server
// connection is free. Declare it with [Options.TransactionPooling] (a pool
// on pgx's driver without it says so once, at Error, where its first
// connection finds a pooler between, the server's backend not the one the
// connection announced, and applies declared settings per transaction, as
// with TransactionPooling: the connections taken meanwhile wait for that
// check's answer, and where it gets none the settings go per transaction
// until one does; a statement that cannot carry them (DO, raw access) is
// then refused where settings are declared; but what else a scope leaves
// in the session reaches other clients, and is not refused. Another
// driver hides the backend the connection announced: there nothing is
// found, and TransactionPooling must be declared), and choose:
//
//   - pgx's exec mode: default_query_exec_mode=exec in the connection
//     string (or simple_protocol, cache_describe). The default,
//     cache_statement, and describe_exec prepare statements on the server,
//     which PgBouncer before 1.21 (Debian 12 has 1.18) does not carry from
//     one server connection to the next: about half the statements then fail
//     with prepared statement "stmtcache_…" does not exist, or already
//     exists. A pool warns once of such a mode under TransactionPooling, and
//     logs the first such failure once in any case, naming the fix.
//   - where state goes: the settings a unit of work declares ([Setting])
//     work unchanged, transaction-local, in each statement's own implicit
//     transaction (the pooler keeps one server connection until the Sync
//     that ends it) or in [Atomic]'s; other state per transaction, inside
//     [Atomic] (SET LOCAL, set_config(…, true), pg_advisory_xact_lock,
//     CREATE TEMP TABLE … ON COMMIT DROP). Statements that set
//     session-level state (SET, RESET, set_config(…, false) or with a
//     name computed or passed as an argument, TREAT(… AS name), an UPDATE
//     of pg_settings, a search_path (SET [LOCAL] search_path or SET
//     [LOCAL] SCHEMA) that names pg_temp or cannot be read, SET ROLE,
//     LISTEN, PREPARE, EXECUTE, cursors WITH HOLD, temporary objects and
//     anything that names pg_temp (a CopyFrom's table too), session
//     advisory locks, LOAD, DISCARD, and EXPLAIN ANALYZE of any of
//     these; so does the text a pgx.QueryRewriter of the user's
//     rewrites a statement to, read as pgx runs it) fail with
//     [ErrSessionState] before they are sent, and so do those that
//     read sequence state (currval, lastval: there it is whatever the
//     last client of the server connection left; a composite's field
//     named currval read after a parenthesis or a subscript, (r.m).currval,
//     is refused too: the text cannot tell it from a call), and
//     [Scope.PrepareContext], and, in pgx's simple protocol, a statement
//     with arguments where pgx's reading of the text (which puts them in)
//     finds a placeholder that PostgreSQL reads as part of a string, a
//     comment or a name (name'\'…, x$a$: see the reset above); New panics with
//     OnAcquire or ResetAlways. Not refused, and not reset either, so that
//     it reaches another client: what the classifier cannot see (state left
//     by a function, DO, CALL, a trigger or rule of a DML statement,
//     [Scope.Conn], [Scope.Pgx], the statements of a *sql.Tx of
//     [Scope.BeginTx]; a CREATE without a
//     schema where the role's or database's search_path begins with
//     pg_temp; an index or a view made on a temporary table such code
//     left), and the sequence state that nextval and every INSERT into a
//     table with a serial or identity column leave (refusing them would
//     refuse most writes; it is harmless unless a later client reads it,
//     which is refused). LISTEN needs a connection of its own, straight to
//     PostgreSQL.
//   - the pooler's limits: max_client_conn at least the instances times
//     MaxWorkers, default_pool_size the server connections you want per
//     database and user; search_path on the role (ALTER ROLE … SET
//     search_path), not in the connection string, which PgBouncer refuses.
//
// There the session reset is not run (it would reach some other server
// connection), and the health check looks at the socket to PgBouncer, not
// at the server's: a server backend killed while idle is PgBouncer's to
// replace, and one killed mid-statement fails that statement, which is run
// again under the rules above. While PgBouncer is down, work fails at
// once with [ErrUnavailable] (middleware answers 503, wsconsumer closes
// with 1013), and recovers by itself once it is back. What PgBouncer
// refuses that no retry fixes (a role or database it does not know, a
// wrong password, a startup parameter it does not pass on, PostgreSQL's
// refusal of its server login, which it passes on) is [ErrMisconfigured].
// After PostgreSQL refused its server login, PgBouncer holds the next
// clients of that database and user until server_login_retry (15 s by
// default) without a word: their connects time out at ConnectTimeout as
// outages, between the misconfigurations; so does every connect where
// auth_query cannot run (a database its "*" entry sends on that does not
// exist). Debian 12's
// PgBouncer 1.18 was seen here to crash on a cancel request (server_proto:
// server in bad state), which pgx sends when a statement's context ends
// mid-flight; later versions were not tried.
package dbctx
