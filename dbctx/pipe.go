package dbctx

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"unsafe"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Sending a prefix, and the statement after it, in one round trip of the
// extended protocol.
//
// In pgx's cache_statement mode (its default) on a direct connection,
// each statement of a prefix and each statement sent after one is
// prepared on the connection under a name of dbscope's (dbscope_N): its
// Parse goes once per connection, in the round trip of its first use (a
// pgconn pipeline), and from then on only Bind and Execute (a pgconn
// batch), as for pgx's own cached statements, so PostgreSQL neither
// parses nor plans it again. In the other modes of the extended protocol,
// and under TransactionPooling (a pooler before PgBouncer 1.21 loses named
// statements), they go unnamed, parsed every time, as pgx sends its own
// statements in those modes. The names are protocol-level statements, as
// pgx's are: the sweep of statements PREPAREd in SQL leaves them alone.
//
// The sweep itself, where a reset owes one, is first a check that no
// statement was PREPAREd in SQL (sweepCheckSQL), sent before the reset's
// transaction: if the check fails, nothing after it ran, the implicit
// transaction is rolled back, and the round trip goes again with the full
// sweep (sweepSQL), a DO block, which costs PostgreSQL several times the
// check. The check fails otherwise where the statements pgx and dbscope
// keep prepared number more than exist (sweepMissing): they are dropped
// (session.dropAll) and the round trip goes again.

// named reports whether the statements of a prefix on c, and those sent
// after one, are prepared on c under a name.
func (pl *Pool) named(c *session) bool {
	return c.mode == pgx.QueryExecModeCacheStatement && !pl.opts.TransactionPooling
}

// sweepCheckSQL fails (division by zero) where a statement PREPAREd in
// SQL exists. It reads the function under the pg_prepared_statements
// view, which costs PostgreSQL 5-15% less; either lists every statement
// prepared on the connection (see the package doc).
//
// Before that, it fails otherwise (cannot take logarithm of zero, 2201E:
// sweepMissing) where fewer statements prepared through the protocol
// exist than its parameter, the count pgx's cache and dbscope's hold
// (session.kept; 0 where the connection's statements are not named):
// code the classifier cannot read (DO, a function, CALL) deallocated
// some (EXECUTE 'DEALLOCATE ALL'), and the next statement bound by one of
// their names would fail (26000), on whatever path it runs (a batch, a
// *sql.Tx, Scope.Pgx, inside Atomic). Both caches are then dropped
// (session.dropAll) and the round trip goes again. Behind a pooler the
// count is not asked: the server's statements are the pooler's.
//
// Its operators are named in pg_catalog, as the reset's statements are:
// it runs before the reset, under the search_path the last scope left,
// which may find an operator of the user's first.
const sweepCheckSQL = "SELECT pg_catalog.ln((pg_catalog.count(*) FILTER (WHERE NOT from_sql) OPERATOR(pg_catalog.>=) $1::bigint)::int::double precision), " +
	"1 OPERATOR(pg_catalog./) (pg_catalog.count(*) FILTER (WHERE from_sql) OPERATOR(pg_catalog.=) 0)::int FROM pg_catalog.pg_prepared_statement()"

// sweepCheckListenSQL is sweepCheckSQL that fails also where the session
// listens on a channel: the reset after it then goes again, with the full
// sweep, in a transaction of its own, since UNLISTEN takes effect at
// commit (see prefixStatements).
const sweepCheckListenSQL = "SELECT pg_catalog.ln((pg_catalog.count(*) FILTER (WHERE NOT from_sql) OPERATOR(pg_catalog.>=) $1::bigint)::int::double precision), " +
	"1 OPERATOR(pg_catalog./) (pg_catalog.count(*) FILTER (WHERE from_sql) OPERATOR(pg_catalog.=) 0 AND NOT EXISTS (SELECT FROM pg_catalog.pg_listening_channels()))::int " +
	"FROM pg_catalog.pg_prepared_statement()"

// isSweepCheck reports whether sql is one of the sweep's checks, which
// take the count of session.kept as their parameter.
func isSweepCheck(sql string) bool { return sql == sweepCheckSQL || sql == sweepCheckListenSQL }

// unnamed reports whether p's statement sql goes unnamed where the
// connection's statements are named (Pool.named). Code the last scope ran
// may have replaced them: DEALLOCATE dbscope_N and PREPARE dbscope_N AS
// SELECT, in SQL, and the reset that binds that name runs the code's
// statement instead of its own. The check that no statement was PREPAREd
// in SQL sees such a replacement, unless it is the one replaced: after
// code apart from a DML statement's own (DO, CALL, a function: the
// session's codeApart), it goes unnamed, parsed and planned anew. Once it
// failed, every statement of the round trip with the full sweep goes
// unnamed. After DML alone the check stays named: a trigger written to
// replace dbscope's statements is not guarded against (see the package
// doc).
func (p *prefix) unnamed(sql string) bool {
	if !p.reset || p.seqOnly {
		return false
	}
	if p.sweep && !p.check {
		return true
	}
	return p.checkApart && isSweepCheck(sql)
}

// sweepFound reports whether err, on p's round trip of which reached
// statements ran, is p's sweep check failing.
func sweepFound(p *prefix, reached int, err error) bool {
	var pe *pgconn.PgError
	return p != nil && p.check && reached == 0 && errors.As(err, &pe) && pe.Code == "22012"
}

// sweepMissing reports whether err, on p's round trip of which reached
// statements ran, is p's sweep check finding fewer statements prepared
// through the protocol than the connection's caches hold.
func sweepMissing(p *prefix, reached int, err error) bool {
	var pe *pgconn.PgError
	return p != nil && p.check && reached == 0 && errors.As(err, &pe) && pe.Code == "2201E"
}

// sweepAgain reports whether p's round trip on c, which failed with err
// after reached of its statements ran, goes again: its check found a
// statement PREPAREd in SQL (again with the full sweep, no check), or
// statements missing (again after dropAll, which sets *dropped; where
// dropAll ran already, nothing is kept to count: with the full sweep).
// Where it does not, it returns err, or dropAll's error.
func (c *session) sweepAgain(ctx context.Context, p *prefix, reached int, err error, dropped *bool) (bool, error) {
	missing := sweepMissing(p, reached, err)
	switch {
	case sweepFound(p, reached, err) || missing && *dropped:
		p.check = false
		return true, nil
	case missing:
		*dropped = true
		if err := c.dropAll(ctx); err != nil {
			return false, err
		}
		return true, nil
	}
	return false, err
}

// pipeRead is what one request of a round trip sends back, in order.
type pipeRead struct {
	prepared string // the SQL of a statement being prepared as name; "" for a statement's result
	name     string
	closed   bool // a statement deallocated
}

// newName returns a name for a statement prepared on c.
func (c *session) newName() string {
	c.named++
	return "dbscope_" + strconv.Itoa(c.named)
}

// roundTrip is one round trip of the extended protocol: a batch where
// every statement is prepared already (or none is named), else a
// pipeline, which can prepare and deallocate.
type roundTrip struct {
	b   pgconn.Batch
	pl  *pgconn.Pipeline
	mrr *pgconn.MultiResultReader
}

// startPrefix begins a round trip on c and queues, first in it, the
// deallocation of c's stale statements and p's statements, recording in
// c.reads what each sends back. Each of p's statements is looked up once
// among those prepared on c: if one is missing (it is prepared now) or a
// statement is stale, the round trip is a pipeline, else a batch.
func (pl *Pool) startPrefix(ctx context.Context, c *session, rt *roundTrip, p *prefix, named bool) {
	c.sds = c.sds[:0]
	pipeline := len(c.stale) > 0
	if named {
		pl.prefixStatements(p, func(sql string, _ bool) {
			var sd *pgconn.StatementDescription
			if !p.unnamed(sql) {
				sd = c.prep[sql]
				pipeline = pipeline || sd == nil
			}
			c.sds = append(c.sds, sd)
		})
	}
	if pipeline {
		rt.pl = c.pc.StartPipeline(ctx)
	}
	c.reads = c.reads[:0]
	if rt.pl != nil {
		for _, name := range c.stale {
			rt.pl.SendDeallocate(name)
			c.reads = append(c.reads, pipeRead{closed: true})
		}
		clear(c.stale)
		c.stale = c.stale[:0]
	}
	i := 0
	pl.prefixStatements(p, func(sql string, set bool) {
		var params [][]byte
		switch {
		case set:
			params = c.setConfigParams(p.set, p.local)
		case isSweepCheck(sql):
			params = c.keptParams(named)
		}
		switch {
		case !named || p.unnamed(sql):
			rt.sendParams(sql, params, nil, nil, nil)
		case c.sds[i] != nil:
			rt.sendStatement(c.sds[i], params, nil, nil)
		default: // a pipeline
			name := c.newName()
			rt.pl.SendPrepare(name, sql, nil)
			c.reads = append(c.reads, pipeRead{prepared: sql, name: name})
			rt.pl.SendQueryPrepared(name, params, nil, nil)
		}
		c.reads = append(c.reads, pipeRead{})
		i++
	})
	clear(c.sds) // hold no description past the round trip
}

func (rt *roundTrip) sendParams(sql string, params [][]byte, oids []uint32, paramFormats, resultFormats []int16) {
	if rt.pl != nil {
		rt.pl.SendQueryParams(sql, params, oids, paramFormats, resultFormats)
	} else {
		rt.b.ExecParams(sql, params, oids, paramFormats, resultFormats)
	}
}

func (rt *roundTrip) sendStatement(sd *pgconn.StatementDescription, params [][]byte, paramFormats, resultFormats []int16) {
	if rt.pl != nil {
		rt.pl.SendQueryStatement(sd, params, paramFormats, resultFormats)
	} else {
		rt.b.ExecStatement(sd, params, paramFormats, resultFormats)
	}
}

// send sends what was queued.
func (rt *roundTrip) send(ctx context.Context, c *session) error {
	if rt.pl == nil {
		rt.mrr = c.pc.ExecBatch(ctx, &rt.b)
		return nil
	}
	rt.pl.SendPipelineSync()
	return rt.pl.Flush()
}

// next returns the next result, or the description of a statement
// prepared.
func (rt *roundTrip) next() (*pgconn.ResultReader, *pgconn.StatementDescription, error) {
	if rt.pl == nil {
		if !rt.mrr.NextResult() {
			if err := rt.mrr.Close(); err != nil {
				return nil, nil, err
			}
			return nil, nil, errOutOfStep
		}
		return rt.mrr.ResultReader(), nil, nil
	}
	res, err := rt.pl.GetResults()
	if err != nil {
		return nil, nil, err
	}
	switch res := res.(type) {
	case *pgconn.ResultReader:
		return res, nil, nil
	case *pgconn.StatementDescription:
		return nil, res, nil
	case *pgconn.CloseComplete:
		return nil, nil, nil
	}
	return nil, nil, errOutOfStep
}

// close reads the rest of the round trip.
func (rt *roundTrip) close() error {
	if rt.pl != nil {
		return rt.pl.Close()
	}
	if rt.mrr != nil {
		return rt.mrr.Close()
	}
	return nil
}

// errOutOfStep is a round trip that sent back what was not asked.
var errOutOfStep = errors.New("dbctx: round trip out of step")

// readPrefix reads what startPrefix queued: the count of p's statements
// that ran without an error, and the first error.
func (pl *Pool) readPrefix(c *session, rt *roundTrip) (reached int, err error) {
	for _, r := range c.reads {
		rr, sd, err := rt.next()
		if err != nil {
			return reached, err
		}
		switch {
		case r.closed:
		case r.prepared != "":
			if sd == nil {
				return reached, errOutOfStep
			}
			sd.Name, sd.SQL = r.name, r.prepared
			if c.prep == nil {
				c.prep = make(map[string]*pgconn.StatementDescription)
			}
			c.prep[r.prepared] = sd
		default:
			if rr == nil {
				return reached, errOutOfStep
			}
			if _, err := rr.Close(); err != nil {
				return reached, err
			}
			reached++
		}
	}
	return reached, nil
}

// runPrefix runs p alone on c, in one round trip (two where its sweep
// check fails): how many of its statements ran without an error, and the
// first error.
func (pl *Pool) runPrefix(ctx context.Context, c *session, p *prefix) (reached int, err error) {
	dropped := false
	for {
		named := pl.named(c)
		rt := c.roundTrip()
		pl.startPrefix(ctx, c, rt, p, named)
		if err = rt.send(ctx, c); err == nil {
			reached, err = pl.readPrefix(c, rt)
		}
		err = errors.Join(err, rt.close())
		var retry bool
		if retry, err = c.sweepAgain(ctx, p, reached, err, &dropped); retry {
			continue
		}
		c.lostStatements(err)
		return reached, err
	}
}

// runTraced is runPrefix, told to pgx's tracer as a round trip of
// dbscope's own (traceAlone). Under c's lock.
func (pl *Pool) runTraced(ctx context.Context, c *session, p *prefix) (reached int, err error) {
	tctx, traced := pl.traceAlone(ctx, c, p)
	reached, err = pl.runPrefix(tctx, c, p)
	traced(err)
	return reached, err
}

// lostStatements forgets the statements prepared on c where err says one
// of them is gone (user code deallocated it): they are prepared again,
// and those that remain deallocated.
func (c *session) lostStatements(err error) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "26000" { // invalid_sql_statement_name
		return
	}
	for _, sd := range c.prep {
		c.stale = append(c.stale, sd.Name)
	}
	c.prep = nil
	for _, sd := range c.descs.m {
		if sd.Name != "" {
			c.stale = append(c.stale, sd.Name)
		}
	}
	c.descs.m = nil
}

// kept returns how many statements pgx's cache and dbscope keep prepared
// on c under a name: as many exist on the server, or more (a statement
// pgx dropped from its cache is deallocated at its next statement),
// unless code of the user's deallocated some.
func (c *session) kept() int {
	n := len(c.prep) + pgxCached(c.px)
	for _, sd := range c.descs.m {
		if sd.Name != "" {
			n++
		}
	}
	return n
}

// keptParams returns the sweep check's parameter, in c's buffer: c.kept()
// where the connection's statements are named (Pool.named), else 0.
func (c *session) keptParams(named bool) [][]byte {
	n := 0
	if named {
		n = c.kept()
	}
	c.params = append(c.params[:0], strconv.AppendInt(nil, int64(n), 10))
	return c.params
}

// dropAll drops every statement prepared on c, with pgx's caches and
// dbscope's (pgx's DeallocateAll: one round trip): where code of the
// user's deallocated some of them (sweepMissing), pgx and dbscope would
// otherwise bind the next by a name that is gone. Under c's lock.
func (c *session) dropAll(ctx context.Context) error {
	c.prep, c.stale, c.descs.m = nil, nil, nil
	return c.px.DeallocateAll(ctx)
}

// pgx says how many statements its cache_statement mode keeps prepared
// (stmtcache.Cache's Len) only in an unexported field of pgx.Conn:
// pgxCacheField is that field, found by reflection at start-up, where
// the pgx built in has it with that method. Where a pgx version does not,
// pgxCached is 0 and the check counts dbscope's statements alone
// (TestPgxCacheField fails, so that this is brought up to date).
var pgxCacheField = func() reflect.StructField {
	f, ok := reflect.TypeFor[pgx.Conn]().FieldByName("statementCache")
	if !ok || f.Type.Kind() != reflect.Interface || !f.Type.Implements(reflect.TypeFor[interface{ Len() int }]()) {
		return reflect.StructField{}
	}
	return f
}()

// pgxCached returns how many statements px's cache keeps prepared.
func pgxCached(px *pgx.Conn) int {
	if px == nil || pgxCacheField.Type == nil {
		return 0
	}
	v := reflect.NewAt(pgxCacheField.Type, unsafe.Add(unsafe.Pointer(px), pgxCacheField.Offset)).Elem()
	if v.IsNil() {
		return 0
	}
	return v.Interface().(interface{ Len() int }).Len()
}
