package dbctx

import (
	"context"
	"database/sql"
	"errors"
	"runtime"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Running a statement on a pgx connection, after what is owed before it.
//
// Without a prefix a statement runs as pgx's stdlib driver would run it:
// pgx's Exec, or its Query with the stdlib's result formats for
// database/sql's results, in the connection's exec mode. With one, the
// prefix's statements and the statement are sent in one round trip:
//
//   - in the exec modes of the extended protocol (exec, cache_statement,
//     cache_describe, describe_exec) as one pgconn pipeline (pipe.go), the
//     statement with the parameter types of a description the session
//     caches (one round trip to describe it the first time the connection
//     runs that text, as pgx's own modes need), prepared under a name in
//     cache_statement mode, else unnamed; in the exec mode with none;
//   - in simple_protocol mode as one pgx batch: pgx writes the parameters
//     into the text, as it does for every statement in that mode.

// withLock runs f while holding database/sql's lock of c, as database/sql's
// own statements do: user code may drive c from another goroutine through
// what the scope handed out (a *sql.Tx, a *sql.Stmt, c itself), and
// database/sql does so under that lock. It returns database/sql's error
// where c is closed (f does not run then), else f's.
func withLock(c *sql.Conn, f func() error) (err error) {
	var ferr error
	entered := false
	defer func() {
		if entered {
			return // f's own panic goes on
		}
		if r := recover(); r != nil {
			// database/sql's Conn.Raw checks that c is open, then takes
			// its lock and reads its driver connection, which a Close
			// on another goroutine (database/sql closes a *sql.Conn
			// whose operation failed with driver.ErrBadConn) may have
			// set to nil in between: Raw then dereferences nil. c is
			// closed, and that is the answer.
			err = closedPanic(c, r)
		}
	}()
	if err := c.Raw(func(any) error {
		entered = true
		ferr = f()
		return nil
	}); err != nil {
		return err
	}
	return ferr
}

// closedPanic returns sql.ErrConnDone for r, a panic out of one of c's
// methods before any code of dbscope's or the driver's ran, where it is
// database/sql's nil dereference on a *sql.Conn that another goroutine
// closed in the middle of the call (see withLock): a runtime error, and c
// closed. Any other panic goes on.
func closedPanic(c *sql.Conn, r any) error {
	if _, rt := r.(runtime.Error); !rt || !errors.Is(c.Raw(func(any) error { return nil }), sql.ErrConnDone) {
		panic(r)
	}
	return sql.ErrConnDone
}

// result is a statement's rows on a pgx connection, and what ends its
// round trip.
type result struct {
	pgx.Rows
	s     *Scope
	c     *session
	p     *prefix          // what went before it, nil if nothing
	br    pgx.BatchResults // the batch that carried it (simple_protocol)
	rt    *roundTrip       // the round trip that carried it (extended protocol)
	query string
	qargs bool // its arguments are c.qargs
}

// finish closes the rows, reads to the end of the round trip and records
// what the prefix left; it returns the first error. Under c's lock.
func (r *result) finish() error {
	r.Rows.Close()
	if r.qargs {
		r.c.dropArgs()
	}
	err := r.Rows.Err()
	switch {
	case r.br != nil:
		err = errors.Join(err, r.br.Close())
	case r.rt != nil:
		err = join(err, r.rt.close())
	}
	if r.p != nil {
		r.s.prefixDone(r.c, r.p, err, all)
		if err != nil {
			r.c.dropDesc(r.query)
			r.c.lostStatements(err)
		}
		r.c.traceEnd(r.Rows.CommandTag(), err)
	}
	return err
}

// end finishes rows handed out (see Scope.opened), on the goroutine that
// closes them.
func (r *result) end() error {
	err := withLock(r.c.pin.conn, r.finish)
	r.c.pin.open.Add(-1)
	return err
}

// pgxQuery runs a statement that returns rows on c, after p: its rows, to
// be ended with finish. sqlFormats asks for the result formats of
// database/sql's results. Under c's lock.
func (s *Scope) pgxQuery(ctx context.Context, c *session, p *prefix, query string, args []any, sqlFormats bool) (result, error) {
	res := result{s: s, c: c, query: query}
	if p != nil && (p.reset && c.setDue || s.pathAlone(c, p)) && c.mode != pgx.QueryExecModeExec && c.mode != pgx.QueryExecModeSimpleProtocol && c.descs.m[query] == nil {
		// The statement is described in a round trip before its own,
		// which would run under the settings the last scope set and the
		// reset undoes (its search_path, its statement_timeout), or
		// without the search_path the unit declares: what is owed goes
		// first, alone.
		// Described now, the statement rides with what is owed the next
		// time.
		reached, err := s.pool.runTraced(ctx, c, p)
		s.prefixDone(c, p, err, reached)
		if err == nil {
			_, err = c.describe(ctx, query, s.pool.named(c))
		}
		if err != nil {
			return res, err
		}
		p = nil
	}
	if p.empty() {
		if sqlFormats {
			// In the session's buffer, until the rows are closed: a
			// tracer may keep the arguments it was told of until the
			// statement ends (pgx's tracelog logs them then).
			c.qargs = append(append(c.qargs[:0], sqlResultFormats), args...)
			args, res.qargs = c.qargs, true
		}
		var err error
		res.Rows, err = c.px.Query(ctx, query, args...)
		if err != nil && res.qargs {
			c.dropArgs() // the rows are closed: pgx has told its tracer
		}
		return res, err
	}
	res.p = p
	if c.mode == pgx.QueryExecModeSimpleProtocol {
		return res, s.pgxBatchQuery(ctx, &res, args)
	}
	return res, s.pgconnQuery(ctx, &res, args, sqlFormats)
}

// pgxBatchQuery is pgxQuery with a prefix, in simple_protocol mode.
func (s *Scope) pgxBatchQuery(ctx context.Context, res *result, args []any) error {
	c, p := res.c, res.p
	b := &pgx.Batch{}
	n := s.pool.queuePgx(b, p)
	b.Queue(res.query, args...)
	c.send = sending{p: p, n: n, batch: true}
	br := c.px.SendBatch(ctx, b)
	c.send = sending{}
	for i := range n {
		if _, err := br.Exec(); err != nil {
			br.Close()
			s.prefixDone(c, p, failed(err), i)
			return err
		}
	}
	rows, err := br.Query()
	if err != nil {
		br.Close()
		s.prefixDone(c, p, failed(err), all)
		return err
	}
	res.Rows, res.br = rows, br
	return nil
}

// pgconnQuery is pgxQuery with a prefix, in the extended protocol's modes.
func (s *Scope) pgconnQuery(ctx context.Context, res *result, args []any, sqlFormats bool) error {
	c, p, query := res.c, res.p, res.query
	if c.qt != nil {
		// pgx's tracer does not see what goes through pgconn: told here,
		// as pgx would tell it, and told what goes before.
		c.send = sending{p: p, n: s.pool.preludeLen(p)}
		ctx = c.qt.TraceQueryStart(ctx, c.px, pgx.TraceQueryStartData{SQL: query, Args: args})
		c.send = sending{}
		c.tctx = ctx
	}
	named, dropped := s.pool.named(c), false
	// Again where the sweep's check failed (sweepAgain): the statement
	// described anew where dropAll dropped its description.
	for {
		var sd *pgconn.StatementDescription
		if c.mode != pgx.QueryExecModeExec {
			var err error
			if sd, err = c.describe(ctx, query, named); err != nil {
				return c.traceEnd(pgconn.CommandTag{}, err)
			}
		}
		eqb := &c.eqb
		if err := eqb.Build(c.px.TypeMap(), sd, args); err != nil {
			return c.traceEnd(pgconn.CommandTag{}, err)
		}
		formats := eqb.ResultFormats
		if sd != nil && (sqlFormats || named) {
			// A slice of their own: the round trip keeps a named statement's.
			formats = c.resultFormats(len(sd.Fields))
			if sqlFormats {
				for i, f := range sd.Fields {
					formats[i] = sqlResultFormats[f.DataTypeOID]
				}
			} else {
				copy(formats, eqb.ResultFormats)
			}
		}
		rt := c.roundTrip()
		s.pool.startPrefix(ctx, c, rt, p, named)
		switch {
		case sd == nil:
			rt.sendParams(query, eqb.ParamValues, nil, eqb.ParamFormats, formats)
		case named:
			rt.sendStatement(sd, eqb.ParamValues, eqb.ParamFormats, formats)
		default:
			rt.sendParams(query, eqb.ParamValues, sd.ParamOIDs, eqb.ParamFormats, formats)
		}
		reached := 0
		err := rt.send(ctx, c)
		if err == nil {
			reached, err = s.pool.readPrefix(c, rt)
		}
		var rr *pgconn.ResultReader
		if err == nil {
			reached = all
			if rr, _, err = rt.next(); err == nil && rr == nil {
				err = errOutOfStep
			}
		}
		if err == nil {
			res.Rows, res.rt = pgx.RowsFromResultReader(c.px.TypeMap(), rr), rt
			return nil
		}
		err = join(err, rt.close())
		var retry bool
		if retry, err = c.sweepAgain(ctx, p, reached, err, &dropped); retry {
			continue
		}
		s.prefixDone(c, p, failed(err), reached)
		c.dropDesc(query)
		c.lostStatements(err)
		return c.traceEnd(pgconn.CommandTag{}, err)
	}
}

// pathAlone reports whether p sets a declared parameter of PostgreSQL's
// (search_path, role…; not a custom setting such as app.tenant), under
// which a statement not yet described must be described (see pgxQuery):
// not behind a pooler outside a transaction, where settings set alone
// would not last to the next round trip (there the exec mode, which
// describes nothing, is the one to use).
// Under c's lock (pgxQuery's): pgconn's state is read as it is.
func (s *Scope) pathAlone(c *session, p *prefix) bool {
	if p.local && !p.begin && s.pool.localSettings() && !s.atomicTxOpen() && c.pc.TxStatus() == 'I' {
		return false
	}
	for _, st := range p.set {
		if strings.IndexByte(st.name, '.') < 0 && !st.around {
			// A parameter of PostgreSQL's, not a custom setting: it may
			// change how the statement reads (search_path, role, DateStyle).
			return true
		}
	}
	return false
}

// resultFormats returns c's buffer of n result formats, for the statement
// of a prefixed round trip (the round trip keeps it until it is read).
func (c *session) resultFormats(n int) []int16 {
	if cap(c.fmts) < n {
		c.fmts = make([]int16, n)
	}
	c.fmts = c.fmts[:n]
	return c.fmts
}

// dropArgs lets go of the arguments of the database/sql query that ended
// (see Scope.pgxQuery), keeping the buffer unless it grew large.
func (c *session) dropArgs() {
	clear(c.qargs)
	c.qargs = c.qargs[:0]
	if cap(c.qargs) > 64 {
		c.qargs = nil
	}
}

// join joins two errors of one round trip, b once only where it is a.
func join(a, b error) error {
	if b == nil || errors.Is(a, b) {
		return a
	}
	return errors.Join(a, b)
}

// pgxExec runs a statement that returns no rows on c, after p. Under c's
// lock.
func (s *Scope) pgxExec(ctx context.Context, c *session, p *prefix, query string, args []any) (pgconn.CommandTag, error) {
	if p.empty() {
		return c.px.Exec(ctx, query, args...)
	}
	res, err := s.pgxQuery(ctx, c, p, query, args, false)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	for res.Next() {
	}
	err = res.finish()
	return res.CommandTag(), err
}

// describe returns the description of query on c: cached, or asked of the
// server (a round trip, the first time), prepared under a name if named.
func (c *session) describe(ctx context.Context, query string, named bool) (*pgconn.StatementDescription, error) {
	if sd := c.descs.m[query]; sd != nil {
		return sd, nil
	}
	name := ""
	if named {
		name = c.newName()
	}
	sd, err := c.pc.Prepare(ctx, name, query, nil)
	if err != nil {
		return nil, err
	}
	c.putDesc(query, sd)
	return sd, nil
}

// descCache holds the descriptions of the statements a connection ran
// after a prefix, as pgx's cache_describe mode does; it is dropped
// whole when full, and an entry whose statement failed is dropped (its
// schema may have changed). A named statement dropped is deallocated with
// the next prefix.
type descCache struct {
	m map[string]*pgconn.StatementDescription
}

const descCacheSize = 256

func (c *session) putDesc(query string, sd *pgconn.StatementDescription) {
	d := &c.descs
	if d.m == nil || len(d.m) >= descCacheSize {
		for _, old := range d.m {
			if old.Name != "" {
				c.stale = append(c.stale, old.Name)
			}
		}
		d.m = make(map[string]*pgconn.StatementDescription)
	}
	d.m[query] = sd
}

func (c *session) dropDesc(query string) {
	if sd := c.descs.m[query]; sd != nil {
		if sd.Name != "" {
			c.stale = append(c.stale, sd.Name)
		}
		delete(c.descs.m, query)
	}
}
