package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// Pool runs database work over one *sql.DB in a bounded number of worker
// slots, and hands out connection-scoped handles ([Scope]) that pin a
// connection lazily and clean it up at every boundary.
//
// A Pool is safe for concurrent use. It does not own the *sql.DB: close
// the *sql.DB yourself after [Pool.Close].
type Pool struct {
	db    *sql.DB
	opts  Options
	c     counters
	slots slotQueue // callers waiting for a slot; see slots.go
	notes noteCache // see Scope.note

	misconfig misconfigLog // the causes logged: see connerr.go
	probe     probes       // what answers at the address: see probe.go
	bursts    *bursts      // the recurring warnings of opts.Logger: see logging.go

	closed    atomic.Bool
	closeOnce sync.Once
	closing   context.Context // done once Close has begun (see awaitSettled)
	closeNow  context.CancelFunc

	discardFn func(driverConn any) error
	recent    time.Duration // see check
	async     *Scope        // the scope of every Async context: see Async
	key       *ctxKey       // the context key of the pool's scopes: see Pool.From
	deathSeen atomic.Int64  // monotonic() when a dead connection was last seen
	kept      keepList      // see keep.go
	keepIdle  time.Duration // see keep.go
	keepFor   time.Duration // see keep.go

	execModeOnce sync.Once     // see checkConfig
	pathLate     atomic.Bool   // see checkConfig
	poolerMu     sync.Mutex    // one checkPooler at a time (see checkPoolerOnce)
	poolerRun    chan struct{} // closed when the check under way ends; nil when none; under poolerMu
	poolerKnown  atomic.Bool   // checkPooler answered (or cannot: another driver)
	pooler       atomic.Bool   // checkPooler found one, without TransactionPooling: see localSettings
	stmtErrOnce  sync.Once     // see pgxStatementError

	resetStmts []string       // ResetSQL's statements, sent one by one (prefix.go)
	cleaning   sync.WaitGroup // connections being cleaned on their way back (keep.go)
	bridgeOnce sync.Once      // see bridge.go
	bridgeDB   *bridge
}

// New returns a Pool over db. A nil opts means defaults (see [Options]).
//
// Scopes pin at most one connection per slot, so db must allow at least
// MaxWorkers open connections: where db's MaxOpenConns is unlimited, New
// sets it (and MaxIdleConns) to MaxWorkers; where it is lower, New logs a
// warning, since scopes would then wait inside database/sql instead of
// being refused with ErrBusy. New panics on invalid options.
func New(db *sql.DB, opts *Options) *Pool {
	if db == nil {
		panic("dbctx: New expects a non-nil *sql.DB")
	}
	p := &Pool{
		db:       db,
		opts:     opts.withDefaults(),
		recent:   recentlyReleased,
		keepIdle: keepIdle,
		keepFor:  keepFor,
	}
	p.closing, p.closeNow = context.WithCancel(context.Background())
	p.resetStmts = splitStatements(p.opts.ResetSQL)
	p.opts.Logger, p.bursts = newRecurLogger(p.opts.Logger, recurInterval)
	p.async = &Scope{pool: p, async: true, ended: true}
	p.key = &ctxKey{name: "dbctx.pool", pool: p}
	p.kept.timer.f = p.sweep
	p.slots.timer.f = p.expireWaits
	p.discardFn = func(any) error { return driver.ErrBadConn }
	switch max := db.Stats().MaxOpenConnections; {
	case max == 0:
		db.SetMaxOpenConns(p.opts.MaxWorkers)
		db.SetMaxIdleConns(p.opts.MaxWorkers)
	case max < p.opts.MaxWorkers:
		p.opts.Logger.Warn("dbctx: *sql.DB allows fewer open connections than worker slots; scopes may queue inside database/sql",
			"max_open_conns", max, "max_workers", p.opts.MaxWorkers)
	}
	return p
}

// DB returns the *sql.DB the pool runs on.
func (p *Pool) DB() *sql.DB { return p.db }

// Close refuses new slots with ErrPoolClosed and wakes queued callers with
// it, and gives the connections it keeps between scopes back to the
// *sql.DB, cleaned first. Scopes that hold a slot finish normally. Close
// does not close the *sql.DB. It is safe to call more than once.
func (p *Pool) Close() error {
	p.closeOnce.Do(func() {
		p.closed.Store(true)
		p.closeNow()
		p.closeSlots()
		p.closeKept()
		p.cleaning.Wait()
		p.closeBridge()
		p.stopProbe()
		p.bursts.flush()
	})
	return nil
}

// connect takes a connection kept from an earlier scope, else one from the
// *sql.DB, and makes sure it is alive before user code sees it: one killed
// while idle is discarded and another taken, as often as needed. Then
// OnAcquire runs, after the reset the connection's last user left owed.
// looked is false for a connection check did not look at (given back a
// moment ago).
//
// OnAcquire's statements are the first on the connection: where they find
// it dead (a connection given back a moment ago is not looked at first),
// it is discarded and OnAcquire runs again on another, a few times at most.
func (p *Pool) connect(ctx context.Context, pn *Pin) (c *session, looked bool, err error) {
	var want []setting
	if !p.localSettings() {
		// Under TransactionPooling no session carries settings.
		want = settingsOf(ctx)
	}
	for dead := 0; ; dead++ {
		var ok bool
		c, looked, ok = p.takeKept(pn, want)
		if !ok {
			if c, looked, err = p.checkOut(ctx, pn); err != nil {
				return nil, false, err
			}
		}
		if p.opts.OnAcquire == nil {
			break
		}
		if c.resetDue {
			err = p.clean(ctx, c)
		}
		if err == nil {
			c.pin.see(kindUnknown) // what it runs is not seen
			err = callHook("OnAcquire", func() error { return p.opts.OnAcquire(ctx, c.pin.conn) },
				func() { p.discard(c.pin.conn, discardHook) })
		}
		if err == nil {
			break
		}
		if dead < maxRetries && ctx.Err() == nil && c.gone(err) {
			p.discard(c.pin.conn, discardDead)
			p.sawDeath()
			pn.sawDead()
			continue
		}
		why := discardHook
		if cerr := ctx.Err(); cerr != nil {
			// The unit's context ended while OnAcquire ran: that is the
			// news, whatever the hook's statement said of it (database/sql
			// reports one cut before it was sent as a bad connection,
			// driver.ErrBadConn, and closes the connection).
			why = discardCanceled
			if !errors.Is(err, cerr) {
				err = fmt.Errorf("%w: %w", cerr, err)
			}
		}
		p.discard(c.pin.conn, why)
		return nil, false, fmt.Errorf("dbctx: OnAcquire: %w", err)
	}
	p.c.acquired.Add(1)
	p.c.pinned.Add(1)
	return c, looked, nil
}

// fromDB takes a connection from the *sql.DB within ConnectTimeout,
// where ctx allows longer; past it, errConnectTimeout.
func (p *Pool) fromDB(ctx context.Context) (*sql.Conn, error) {
	d := p.opts.ConnectTimeout
	if dl, ok := ctx.Deadline(); d < 0 || ok && time.Until(dl) <= d {
		return p.db.Conn(ctx)
	}
	cctx, cancel := context.WithTimeoutCause(ctx, d, errConnectTimeout)
	defer cancel()
	conn, err := p.db.Conn(cctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(cctx), errConnectTimeout) {
		err = fmt.Errorf("%w after %v: %w", errConnectTimeout, d, err)
	}
	return conn, err
}

// checkOut takes a live connection from the *sql.DB; pn, if not nil,
// counts those found dead.
func (p *Pool) checkOut(ctx context.Context, pn *Pin) (c *session, looked bool, err error) {
	// database/sql retries a bad connection a couple of times itself; the
	// bound here only stops a loop if every connection looks dead, which
	// means the server is gone and db.Conn will soon fail on its own.
	const maxDead = 64
	if cause := p.refused(); cause != nil { // see probe.go
		p.misconfigured(cause, cause)
		return nil, false, fmt.Errorf("%w: %w (no connect tried: one is, once per %v, until one succeeds)", ErrMisconfigured, cause, p.probe.period())
	}
	for dead := 0; ; dead++ {
		var conn *sql.Conn
		if conn, err = p.fromDB(ctx); err != nil {
			return nil, false, p.connectError(ctx, err) // see connerr.go
		}
		p.connected()
		taken := monotonic()
		if err = conn.Raw(func(dc any) (bad error) {
			c = sessionOfDriver(dc)
			if c.px != nil {
				p.execModeOnce.Do(func() { p.checkConfig(dc) })
				p.checkPoolerOnce(ctx, c)
			} else {
				// Another driver's connection hides the backend it
				// announced: a pooler cannot be told (see the package
				// doc).
				p.poolerKnown.Store(true)
			}
			c.pin = pin{conn: conn, taken: taken}
			looked, bad = p.check(c, taken)
			return bad
		}); err == nil {
			return c, looked, nil
		}
		// Raw saw driver.ErrBadConn: database/sql has closed it.
		conn.Close()
		p.c.discarded[discardDead].Add(1)
		p.sawDeath()
		pn.sawDead()
		if ctx.Err() != nil {
			return nil, false, ctx.Err() // the caller gave up: that is the news
		}
		if dead >= maxDead {
			return nil, false, fmt.Errorf("dbctx: no live connection after %d tries: %w", dead+1, err)
		}
	}
}

// checkConfig reads the connection string of the pool's first
// connection (pgx's; another driver's is not seen).
//
// A search_path there (a parameter, or -c in options) that puts
// pg_catalog after another schema makes every statement of the pool count
// as code: a function of that schema may overload a built-in the text
// names. It is logged once.
//
// Under TransactionPooling, it warns of a pgx exec mode that prepares
// statements on the server and so fails behind PgBouncer before 1.21 (and
// after, without max_prepared_statements): a statement prepared on one
// server connection is missing on the next, or there already.
func (p *Pool) checkConfig(driverConn any) {
	sc, ok := driverConn.(*stdlib.Conn)
	if !ok {
		return
	}
	cfg := sc.Conn().Config()
	for _, v := range startupSearchPaths(cfg.RuntimeParams) {
		if pathLate(v) {
			p.pathLate.Store(true)
			p.opts.Logger.Warn("dbctx: the connection string's search_path puts pg_catalog after another schema, whose functions may overload the built-ins a statement names: every unit of work is reset after it; put pg_catalog first",
				"search_path", v)
			break
		}
	}
	if !p.opts.TransactionPooling {
		return
	}
	switch mode := cfg.DefaultQueryExecMode; mode {
	case pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec:
		name := strings.ReplaceAll(mode.String(), " ", "_") // as the connection string spells it
		p.opts.Logger.Warn("dbctx: TransactionPooling with pgx's default_query_exec_mode "+name+
			", which prepares statements on the server: behind PgBouncer before 1.21, or without max_prepared_statements, "+
			"they go missing between transactions; set default_query_exec_mode=exec (or simple_protocol, cache_describe) in the connection string",
			"default_query_exec_mode", name)
	}
}

// startupSearchPaths returns the search_path values that a connection's
// startup parameters set: the parameter's, and those of -c search_path=…
// or --search_path=… in options.
func startupSearchPaths(params map[string]string) []string {
	var paths, args []string
	for k, v := range params { // names in any case, as PostgreSQL takes them
		switch {
		case strings.EqualFold(k, "search_path"):
			paths = append(paths, v)
		case strings.EqualFold(k, "options"):
			args = append(args, optionArgs(v)...)
		}
	}
	for i := 0; i < len(args); i++ {
		var kv string
		switch a := args[i]; {
		case a == "-c" && i+1 < len(args):
			i++
			kv = args[i]
		case strings.HasPrefix(a, "-c"), strings.HasPrefix(a, "--"):
			kv = a[2:]
		default:
			continue
		}
		if name, v, ok := strings.Cut(kv, "="); ok && strings.EqualFold(strings.ReplaceAll(name, "-", "_"), "search_path") {
			paths = append(paths, v)
		}
	}
	return paths
}

// optionArgs splits the options startup parameter as PostgreSQL does
// (pg_split_opts): at spaces, a backslash escaping the character after it.
func optionArgs(s string) []string {
	var args []string
	var b strings.Builder
	in := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			if in {
				args = append(args, b.String())
				b.Reset()
				in = false
			}
		case c == '\\' && i+1 < len(s):
			i++
			b.WriteByte(s[i])
			in = true
		default:
			b.WriteByte(c)
			in = true
		}
	}
	if in {
		args = append(args, b.String())
	}
	return args
}

// checkPooler warns where the server's backend is not the one that c
// announced at startup, unless the pool has TransactionPooling: a pooler
// (PgBouncer, …) sits between, since it announces a backend of its own
// (BackendKeyData) and hands a server's connection to several clients. In
// its transaction mode a pool must say so: settings applied for the
// session, and whatever a scope leaves in it, would go with the server's
// connection to another client, and a statement after them to another
// server's connection without them. It costs the first connection one
// round trip, of at most poolerCheckTimeout or until the caller's context
// ends; where it fails, nothing is said (and a connection it broke, its
// context ended mid-check, is found dead by the check after it).
func (p *Pool) checkPooler(ctx context.Context, c *session) (answered bool) {
	ctx, cancel := context.WithTimeout(ctx, poolerCheckTimeout)
	defer cancel()
	res := c.pc.ExecParams(ctx, poolerCheckSQL, nil, nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || len(res.Rows[0]) != 1 {
		return false
	}
	pid, err := strconv.ParseUint(string(res.Rows[0][0]), 10, 32)
	if err != nil {
		return false
	}
	if uint32(pid) == c.pc.PID() {
		return true
	}
	// Settings applied for the session would go with the server's
	// connection to another client: from now on they are applied per
	// transaction, as under TransactionPooling, which holds in every mode
	// of a pooler.
	p.pooler.Store(true)
	p.opts.Logger.Error("dbctx: the server's backend is not the one the connection announced: a pooler sits between (PgBouncer?); "+
		"declared settings are applied per transaction from now on, but session state a scope leaves can reach other clients: "+
		"in its transaction pooling mode set Options.TransactionPooling",
		"announced_pid", c.pc.PID(), "backend_pid", pid)
	return true
}

// checkPoolerOnce runs checkPooler on c until one check answers, one at a
// time: the connections checked out while one runs wait for its end, or
// their caller's, so that none applies settings for a session before it
// is known whether a pooler hands that session to other clients; until a
// check answers, the settings go per transaction (localSettings), and
// where one fails (no answer within poolerCheckTimeout, or its context
// ended), the next connection checked out asks again.
func (p *Pool) checkPoolerOnce(ctx context.Context, c *session) {
	if p.opts.TransactionPooling || p.poolerKnown.Load() {
		return
	}
	p.poolerMu.Lock()
	if p.poolerKnown.Load() {
		p.poolerMu.Unlock()
		return
	}
	if running := p.poolerRun; running != nil {
		// Another connection's check runs: its answer, or this
		// caller's end, whichever comes first; without an answer the
		// settings go per transaction (localSettings).
		p.poolerMu.Unlock()
		select {
		case <-running:
		case <-ctx.Done():
		}
		return
	}
	running := make(chan struct{})
	p.poolerRun = running
	p.poolerMu.Unlock()
	answered := p.checkPooler(ctx, c)
	p.poolerMu.Lock()
	if answered {
		p.poolerKnown.Store(true)
	}
	p.poolerRun = nil
	close(running)
	p.poolerMu.Unlock()
}

// localSettings reports whether settings are applied per transaction,
// never for the session: under TransactionPooling, or where a pooler was
// found between without it (checkPooler), or none was yet found not to be
// (checkPoolerOnce).
func (p *Pool) localSettings() bool {
	return p.opts.TransactionPooling || p.pooler.Load() || !p.poolerKnown.Load()
}

const poolerCheckTimeout = 5 * time.Second

// poolerCheckSQL is checkPooler's query, named for pg_stat_activity and
// the server's log.
const poolerCheckSQL = "/* dbscope: a pooler between? */ SELECT pg_catalog.pg_backend_pid()"

// pgxStatementError logs, once per pool, an error of pgx's own prepared
// statements (SQLSTATE 26000 does not exist, 42P05 already exists, for a
// stmtcache_ name): the mark of a pooler in transaction mode under pgx's
// default exec mode.
func (p *Pool) pgxStatementError(err error) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "26000" && pe.Code != "42P05" || !strings.Contains(pe.Message, "stmtcache_") {
		return
	}
	p.stmtErrOnce.Do(func() {
		p.opts.Logger.Warn("dbctx: pgx's cached prepared statements are missing or duplicated on the server, "+
			"as behind a pooler in transaction mode (PgBouncer): set default_query_exec_mode=exec (or simple_protocol, cache_describe) "+
			"in the connection string, and Options.TransactionPooling", "err", err)
	})
}

// sawDeath notes that a connection was found dead or broken: the
// connections given back before now are looked at when next checked out.
func (p *Pool) sawDeath() { p.deathSeen.Store(int64(monotonic())) }

// discard closes conn's driver connection so database/sql never reuses it,
// and counts it under why (a negative why: counted by the caller).
func (p *Pool) discard(conn *sql.Conn, why discardReason) {
	if err := conn.Raw(p.discardFn); err != nil && !errors.Is(err, driver.ErrBadConn) {
		// Already closed (sql.ErrConnDone): database/sql dropped it when the
		// driver reported it bad.
		conn.Close()
	}
	if why >= 0 {
		p.c.discarded[why].Add(1)
	}
}

// headTimer is the timer of a queue kept in time order (the keep, the
// slot queue), set for the queue's head and, from f, for the next one:
// made on first use, guarded by its owner's mutex.
type headTimer struct {
	f     func() // what it runs
	t     *time.Timer
	armed bool // set, f not yet started
}

// set has f run after d.
func (h *headTimer) set(d time.Duration) {
	if h.t == nil {
		h.t = time.AfterFunc(d, h.f)
	} else {
		h.t.Reset(d)
	}
	h.armed = true
}

// stop stops the timer, if it was ever set.
func (h *headTimer) stop() {
	if h.t != nil {
		h.t.Stop()
	}
	h.armed = false
}
