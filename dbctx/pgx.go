package dbctx

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// pgx's own interface on the scope: Exec, Query, QueryRow, CopyFrom and
// SendBatch, the DBTX that sqlc generates with sql_package "pgx/v5". They
// run on the *pgx.Conn under the scope's pinned connection through the
// scope's one path (stmt.go): the lazy slot and pin, the async guard, the
// scope's cancellation, what is owed before the statement, the
// session-state tracking, the safe retry and the statement timing.

// Exec runs a statement through pgx's interface on the scope's connection
// and returns its command tag.
func (s *Scope) Exec(ctx context.Context, query string, args ...any) (pgconn.CommandTag, error) {
	args = s.guardRewriters(args)
	st := s.stmtOf(query, args, viaPgx)
	var tag pgconn.CommandTag
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		return withLock(c.pin.conn, func() (err error) {
			tag, err = s.pgxExec(ctx, c, p, query, args)
			return err
		})
	})
	return tag, err
}

// Query runs a statement that returns rows through pgx's interface on the
// scope's connection. The rows hold the connection until they are
// closed, or read to the end: a statement meanwhile fails with
// ErrConnBusy; a boundary closes them if you do not. As with
// database/sql's driver, the first row is read before Query returns, so
// that a connection found dead then can be replaced and the statement run
// again (see [Scope]).
func (s *Scope) Query(ctx context.Context, query string, args ...any) (pgx.Rows, error) {
	args = s.guardRewriters(args)
	st := s.stmtOf(query, args, viaPgx|rows)
	qctx := ctx // the rows'
	var out *pgxRows
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		return withLock(c.pin.conn, func() error {
			res, err := s.pgxQuery(ctx, c, p, query, args, false)
			if err != nil {
				return err
			}
			more := res.Next()
			if err := res.Err(); err != nil {
				res.finish()
				return err
			}
			r := &pgxRows{Rows: res.Rows, s: s, c: c, ctx: qctx, res: res, preread: true, more: more}
			s.opened(c, r)
			out = r
			return nil
		})
	})
	if err != nil {
		return &pgxRows{err: err}, err
	}
	return out, nil
}

// QueryRow runs a statement that returns at most one row through pgx's
// interface. The row is read before QueryRow returns, so the result holds
// no connection; its error, or pgx.ErrNoRows, comes from Scan.
func (s *Scope) QueryRow(ctx context.Context, query string, args ...any) pgx.Row {
	args = s.guardRewriters(args)
	st := s.stmtOf(query, args, viaPgx)
	var out *pgxRow
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		return withLock(c.pin.conn, func() error {
			res, err := s.pgxQuery(ctx, c, p, query, args, false)
			if err != nil {
				return err
			}
			r := &pgxRow{m: c.px.TypeMap()}
			if res.Next() {
				r.found = true
				r.fields = copyFields(res.FieldDescriptions())
				r.values = copyValues(res.RawValues())
			}
			if err := res.finish(); err != nil {
				return err
			}
			out = r
			return nil
		})
	})
	if err != nil {
		return errPgxRow{err}
	}
	return out
}

// CopyFrom copies rows into a table with the COPY protocol, through pgx's
// interface on the scope's connection. It is never run again on another
// connection: rowSrc may have been read. COPY FROM fires triggers, takes
// sequence values and evaluates defaults as INSERT does: the session is
// reset before the connection is given back. COPY cannot share its round
// trip: settings the session does not carry yet are applied in one of
// their own, and under TransactionPooling, outside a transaction, COPY
// runs in a transaction of its own with them.
func (s *Scope) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rowSrc pgx.CopyFromSource) (int64, error) {
	if s != nil && s.pool.localSettings() && len(settingsOf(ctx)) > 0 {
		s.mu.Lock()
		wrap := s.atomic == 0
		s.mu.Unlock()
		if wrap {
			var n int64
			err := s.atomicTx(ctx, func(ctx context.Context) (err error) {
				n, err = s.CopyFrom(ctx, table, columns, rowSrc)
				return err
			})
			return n, err
		}
	}
	st := stmt{kind: kindState | kindCode, how: viaPgx | alone | noRetry}
	for _, part := range table {
		if tempSchema(part) {
			// As a text that names pg_temp: behind a pooler, whichever
			// client's temporary table the server connection holds.
			st.kind |= kindSessionState
			st.query = "COPY " + table.Sanitize() + " FROM STDIN"
		}
	}
	var n int64
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, _ *prefix) error {
		return withLock(c.pin.conn, func() (err error) {
			n, err = c.px.CopyFrom(ctx, table, columns, rowSrc)
			return err
		})
	})
	return n, err
}

// SendBatch sends the queued queries of b in one round trip through pgx's
// interface on the scope's connection, after what is owed before them.
// Each query is read for session state as a statement of its own would
// be; the batch is never run again on another connection. The results
// hold the connection until they are closed (see Query).
func (s *Scope) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if s == nil {
		return errBatch{ErrNoScope}
	}
	b = s.guardBatch(b)
	st := stmt{how: viaPgx | noRetry | rows, n: len(b.QueuedQueries)}
	// Settings go before the batch: where it is all transaction control
	// (a ROLLBACK TO in a failed transaction, say) they are not needed,
	// and could not run; where it ends its transaction or rolls back to a
	// savepoint before another statement, they would not reach that one.
	control, ends := true, false
	st.tx = txNone
	for i, q := range b.QueuedQueries {
		k, h := s.kindOf(q.SQL, q.Arguments)
		tc := k&(kindOnce|kindAlone) != 0 // as transaction control is: a filter before reading the text
		control = control && tc && needsNoSettings(q.SQL)
		ends = ends || tc && endsBefore(q.SQL, i == len(b.QueuedQueries)-1)
		if k&kindAlone != 0 {
			if m := txControlOf(q.SQL); m != txNone {
				st.tx = m // the batch's last
			}
		}
		if s.pool.opts.TransactionPooling && k&(kindSession|kindSeqRead) != 0 && st.kind&(kindSession|kindSeqRead) == 0 {
			st.query = q.SQL // the one refused
		}
		st.kind |= k
		st.how |= h &^ alone // pgx's batch reads rewriters and options itself
		if i == 0 && k&kindBegin != 0 {
			// The batch begins its own transaction (Batch.BeginTx): what
			// is owed goes first, alone, and settings go into the
			// transaction with the batch's next statement.
			st.how |= alone
		}
	}
	if len(b.QueuedQueries) > 1 {
		st.kind |= kindOnce
		// In pgx's simple protocol the queries go joined by "\n;" as one
		// string, which PostgreSQL reads whole: a quote or comment
		// opened in one query may close in the next, and what reads as
		// three texts it cannot run is one it runs. Read as joined too.
		texts := make([]string, len(b.QueuedQueries))
		for i, q := range b.QueuedQueries {
			texts[i] = q.SQL
		}
		joined := strings.Join(texts, "\n;") // as pgx joins them (the newline ends a -- comment)
		// What it may leave, not how it must be sent (each query is
		// its own statement in the other modes).
		k := classify(joined) & (kindState | kindPoison | kindCode | kindSession | kindSeqRead |
			kindTxSet | kindSetting | kindResolve | kindPathLate)
		ends = ends || endsBefore(joined, true)
		if s.pool.opts.TransactionPooling && k&(kindSession|kindSeqRead) != 0 && st.kind&(kindSession|kindSeqRead) == 0 {
			st.query = joined
		}
		st.kind |= k
	}
	var out *pgxBatch
	if control {
		st.how |= txControl
	}
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		if ends && settingsInPlay(ctx, c) {
			return errEndsTxBefore
		}
		first := !c.pin.used
		return withLock(c.pin.conn, func() error {
			if p != nil && p.reset && !p.seqOnly && c.apart && c.mode == pgx.QueryExecModeCacheStatement {
				// pgx's batch would bind the reset's statements by the
				// names of its cache, which code apart from a DML
				// statement's own may have replaced (see prefix.unnamed):
				// what is owed goes first, alone, its check unnamed.
				reached, err := s.pool.runTraced(ctx, c, p)
				s.prefixDone(c, p, err, reached)
				if err != nil {
					return err
				}
				p = nil
			}
			nb, n := b, 0
			if !p.empty() {
				// No sweep check: where it failed, pgx's batch, which
				// prepares its statements in a round trip of its own
				// first, could not simply go again (pipe.go). The
				// reset sweeps at once, in a transaction of its own.
				p.check = false
				nb = &pgx.Batch{}
				n = s.pool.queuePgx(nb, p)
				nb.QueuedQueries = append(nb.QueuedQueries, b.QueuedQueries...)
				c.send = sending{p: p, n: n}
			}
			br := c.px.SendBatch(ctx, nb)
			c.send = sending{}
			for i := range n {
				if _, err := br.Exec(); err != nil {
					br.Close()
					s.prefixDone(c, p, failed(err), i)
					return err
				}
			}
			out = &pgxBatch{s: s, c: c, br: br, p: p, ctx: ctx, first: first}
			s.opened(c, out)
			return nil
		})
	})
	if err != nil {
		return errBatch{err}
	}
	return out
}

// guardBatch returns b, or under TransactionPooling, where a query of b
// has a pgx.QueryRewriter of the user's, a copy of b whose queries have
// it guarded (see guardRewriters); b itself is not changed.
func (s *Scope) guardBatch(b *pgx.Batch) *pgx.Batch {
	if !s.pool.opts.TransactionPooling || b == nil {
		return b
	}
	var out *pgx.Batch
	for i, q := range b.QueuedQueries {
		args := s.guardRewriters(q.Arguments)
		if len(args) == 0 || &args[0] == &q.Arguments[0] {
			continue
		}
		if out == nil {
			nb := *b
			nb.QueuedQueries = append([]*pgx.QueuedQuery(nil), b.QueuedQueries...)
			out = &nb
		}
		g := *q
		g.Arguments = args
		out.QueuedQueries[i] = &g
	}
	if out == nil {
		return b
	}
	return out
}

// Pgx calls fn with the *pgx.Conn under the scope's connection, for what
// the Scope does not cover (LISTEN, large objects, pgx's own transactions),
// with what is owed applied first (the settings the context declares).
// fn must not close the connection, nor use the scope: a statement of the
// scope while fn runs fails with [ErrConnBusy]. The scope sees none
// of what fn runs: the connection is discarded at the next boundary that
// lets it go (the scope's end; CloseOld, where ConnMaxAge is not 0, once
// the connection is older than it), rather than given back, so that a
// *pgx.Conn kept past it fails. With a
// driver other than pgx's stdlib it returns an error.
func (s *Scope) Pgx(ctx context.Context, fn func(*pgx.Conn) error) error {
	var c *session
	err := s.raw(ctx, func(x *session) {
		c = x
		if c.px != nil {
			// Under the scope's lock, with the settings just applied:
			// a statement of another goroutine may not come between
			// them and fn (its own settings would be fn's, its rows
			// would make fn's statements fail with pgx's "conn busy").
			c.pin.inFn.Store(true)
		}
	})
	if err != nil {
		if c != nil && c.px != nil {
			c.pin.inFn.Store(false)
		}
		return err
	}
	if c.px == nil {
		return errNotPgx
	}
	err = func() error {
		defer c.pin.inFn.Store(false)
		return withLock(c.pin.conn, func() error { return fn(c.px) })
	}()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.observe(ctx, err, false)
}

// opened registers r as the result open on c until it ends (once: see
// result.end): statements meanwhile get ErrConnBusy, and a boundary
// closes it.
func (s *Scope) opened(c *session, r closer) {
	c.pin.open.Add(1)
	c.pin.open1 = r
}

// pgxRows is what Query returns: pgx's rows, of which the first has been
// read already (preread, more: what that Next returned), or an error.
type pgxRows struct {
	pgx.Rows
	s       *Scope
	c       *session
	ctx     context.Context // its statement's (see Scope.rowsFailed)
	res     result          // its statement's, where the rows are its (not a batch's)
	batch   *pgxBatch       // else the batch's
	err     error           // once closed, the rows' error
	preread bool
	more    bool

	mu     sync.Mutex // Close may come from a boundary
	closed bool
	fields []pgconn.FieldDescription // FieldDescriptions' copy, once asked for
}

func (r *pgxRows) Next() bool {
	if r.Rows == nil {
		return false
	}
	more, err := r.next()
	if err != nil {
		r.failed(err)
	}
	return more
}

// next is Next under r.mu; err is the rows' error where they ended with
// one.
func (r *pgxRows) next() (more bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, nil
	}
	if r.preread {
		r.preread = false
		more = r.more
	} else if err := withLock(r.c.pin.conn, func() error { more = r.Rows.Next(); return nil }); err != nil {
		r.err = err // the connection is gone (see Err)
	}
	if !more {
		// pgx closes rows read to the end: so do we, which frees the
		// connection.
		err = r.closeLocked()
	}
	return more, err
}

// failed tells the scope of err, the error the rows ended with
// (Scope.rowsFailed), and keeps what it returns as the rows' error. r.mu
// is not held.
func (r *pgxRows) failed(err error) {
	out := r.s.rowsFailed(r.ctx, r.c, err)
	r.mu.Lock()
	r.err = out
	r.mu.Unlock()
	if b := r.batch; b != nil && errors.Is(out, ErrSessionLost) {
		// The batch's Close reports it too, where the scope closed the
		// batch as it dropped the connection.
		b.mu.Lock()
		if b.gone == nil {
			b.gone = out
		}
		b.mu.Unlock()
	}
}

func (r *pgxRows) Err() error {
	if r.Rows == nil {
		return r.err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	return r.Rows.Err()
}

func (r *pgxRows) Close() {
	if r.Rows == nil {
		return
	}
	r.mu.Lock()
	err := r.closeLocked()
	r.mu.Unlock()
	if err != nil {
		r.failed(err)
	}
}

// closeLocked closes the rows, if not already, and returns their error
// then (nil if they were closed already). Under r.mu.
func (r *pgxRows) closeLocked() error {
	if r.closed {
		return nil
	}
	r.closed = true
	var err error
	if r.res.c != nil {
		err = r.res.end()
	} else {
		// A batch's: closing them ends this result only.
		err = withLock(r.c.pin.conn, func() error { r.Rows.Close(); return nil })
	}
	if r.err == nil {
		r.err = r.Rows.Err()
	}
	if r.err == nil {
		r.err = err
	}
	return r.err
}

// abort ends the rows from a boundary: whoever reads on is told they were
// cut short.
func (r *pgxRows) abort() {
	if r.Rows == nil {
		return
	}
	r.mu.Lock()
	if !r.closed && r.err == nil {
		r.err = errRowsCut
	}
	r.closeLocked()
	r.mu.Unlock()
}

// The row's accessors run under r.mu, as Next and Close do: a boundary
// may close the rows from another goroutine (the scope's end while a
// goroutine still reads), and the connection's next user then reads into
// the buffers they read. Once closed they read nothing.

func (r *pgxRows) CommandTag() pgconn.CommandTag {
	if r.Rows == nil {
		return pgconn.CommandTag{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Rows.CommandTag()
}

func (r *pgxRows) FieldDescriptions() []pgconn.FieldDescription {
	if r.Rows == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.fields
	}
	if r.fields == nil {
		// A copy: pgconn keeps them in the connection, for its next
		// statement.
		r.fields = copyFields(r.Rows.FieldDescriptions())
	}
	return r.fields
}

func (r *pgxRows) Scan(dest ...any) error {
	if r.Rows == nil {
		return r.err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return r.closedErr()
	}
	return r.Rows.Scan(dest...)
}

func (r *pgxRows) Values() ([]any, error) {
	if r.Rows == nil {
		return nil, r.err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, r.closedErr()
	}
	return r.Rows.Values()
}

// RawValues returns the row's values as pgx does: valid until the next
// call of Next, and, where a boundary closes the rows meanwhile, until
// then.
func (r *pgxRows) RawValues() [][]byte {
	if r.Rows == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	return r.Rows.RawValues()
}

// closedErr is what reading closed rows returns: their error, or that
// they are closed. Under r.mu.
func (r *pgxRows) closedErr() error {
	if r.err != nil {
		return r.err
	}
	return errRowsClosed
}

var errRowsClosed = errors.New("dbctx: rows closed")

// Conn returns the *pgx.Conn the rows came from while the scope pins it
// (nil afterwards, when it may be another scope's), and counts it as raw
// access (see [Scope.Pgx]).
func (r *pgxRows) Conn() *pgx.Conn {
	if r.Rows == nil || r.s == nil {
		return nil
	}
	return r.s.handOutPinned(r.c)
}

// handOutPinned hands c's *pgx.Conn out as raw access, if the scope still
// pins it.
func (s *Scope) handOutPinned(c *session) *pgx.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.c != c || c.px == nil {
		return nil
	}
	if s.atomic > 0 && len(s.x.due) > 0 {
		// Savepoints of nested Atomic calls are due, which cannot go now
		// (the rows are open) and would come too late with the scope's
		// next statement: what user code runs on the connection meanwhile
		// is in none of them. Where such a nested Atomic fails, its
		// transaction rolls back whole (see savepoint).
		s.x.unsent = append(s.x.unsent, s.x.due...)
		s.x.due = nil
	}
	s.handOut(c)
	return c.px
}

// pgxRow is QueryRow's result: the row read, or none.
type pgxRow struct {
	m      *pgtype.Map
	fields []pgconn.FieldDescription
	values [][]byte
	found  bool
}

// Scan reads the row into dest, as pgx's own QueryRow does.
func (r *pgxRow) Scan(dest ...any) error {
	if !r.found {
		return pgx.ErrNoRows
	}
	if len(dest) == 1 {
		if rs, ok := dest[0].(pgx.RowScanner); ok {
			return rs.ScanRow(&rowRows{r: r})
		}
	}
	return pgx.ScanRow(r.m, r.fields, r.values, dest...)
}

// rowRows is a pgxRow as the pgx.Rows a pgx.RowScanner reads.
type rowRows struct {
	r    *pgxRow
	next bool
}

func (rr *rowRows) Close()                                       {}
func (rr *rowRows) Err() error                                   { return nil }
func (rr *rowRows) CommandTag() pgconn.CommandTag                { return pgconn.CommandTag{} }
func (rr *rowRows) FieldDescriptions() []pgconn.FieldDescription { return rr.r.fields }
func (rr *rowRows) RawValues() [][]byte                          { return rr.r.values }
func (rr *rowRows) Conn() *pgx.Conn                              { return nil }
func (rr *rowRows) TypeMap() *pgtype.Map                         { return rr.r.m }
func (rr *rowRows) Next() bool                                   { n := !rr.next; rr.next = true; return n }
func (rr *rowRows) Scan(dest ...any) error {
	return pgx.ScanRow(rr.r.m, rr.r.fields, rr.r.values, dest...)
}

func (rr *rowRows) Values() ([]any, error) {
	m := rr.r.m
	values := make([]any, 0, len(rr.r.fields))
	for i, fd := range rr.r.fields {
		buf := rr.r.values[i]
		if buf == nil {
			values = append(values, nil)
			continue
		}
		if dt, ok := m.TypeForOID(fd.DataTypeOID); ok {
			v, err := dt.Codec.DecodeValue(m, fd.DataTypeOID, fd.Format, buf)
			if err != nil {
				return nil, err
			}
			values = append(values, v)
			continue
		}
		if fd.Format == pgtype.TextFormatCode {
			values = append(values, string(buf))
		} else {
			values = append(values, append([]byte(nil), buf...))
		}
	}
	return values, nil
}

// copyValues copies a row's raw values out of pgconn's buffer, into one
// allocation.
func copyValues(raw [][]byte) [][]byte {
	n := 0
	for _, v := range raw {
		n += len(v)
	}
	buf := make([]byte, 0, n)
	out := make([][]byte, len(raw))
	for i, v := range raw {
		if v != nil {
			buf = append(buf, v...)
			out[i] = buf[len(buf)-len(v) : len(buf) : len(buf)]
		}
	}
	return out
}

type errPgxRow struct{ err error }

func (r errPgxRow) Scan(...any) error { return r.err }

// pgxBatch is SendBatch's results.
type pgxBatch struct {
	s  *Scope
	c  *session
	br pgx.BatchResults
	p  *prefix // what went before the batch's queries

	ctx   context.Context // SendBatch's
	first bool            // the batch was the first statement on the connection (see Scope.observe)

	mu     sync.Mutex
	closed bool
	full   bool     // PgBouncer's query_wait_timeout seen, counted: see busy
	gone   error    // the error that lost the session and closed b (see seen)
	rows   *pgxRows // the last Query's, closed with b
}

// busy returns err, of b's results, as ErrBusy where it is PgBouncer's
// query_wait_timeout (see poolerFull), counted and logged once per batch:
// every result of the batch, and its Close, report it. b.mu is held.
func (b *pgxBatch) busy(err error) error {
	if !poolerFull(err) {
		return err
	}
	if !b.full {
		b.full = true
		return b.s.pool.poolerBusy(err)
	}
	return poolerBusyError(err)
}

// seen returns err, of b's results, as the scope tells a statement's
// error (Scope.observe): where the connection failed under the batch,
// its session is lost (ErrSessionLost) as it would be for any other
// statement, rather than left pinned for the scope's next statement to
// find. b.mu is not held (a boundary holds the scope's lock as it closes
// b).
func (b *pgxBatch) seen(err error) error {
	if err == nil || poolerFull(err) || errors.Is(err, errBatchClosed) {
		return err
	}
	gone, err := b.s.failedUnder(b.ctx, b.c, err, b.first)
	if gone {
		// The connection went with the session (observe closed b):
		// Close reports it.
		b.mu.Lock()
		b.gone = err
		b.mu.Unlock()
	}
	return err
}

func (b *pgxBatch) Exec() (pgconn.CommandTag, error) {
	tag, err := b.exec()
	return tag, b.seen(err)
}

func (b *pgxBatch) exec() (tag pgconn.CommandTag, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return tag, errBatchClosed
	}
	lerr := withLock(b.c.pin.conn, func() error { tag, err = b.br.Exec(); return nil })
	return tag, errors.Join(lerr, b.busy(err))
}

func (b *pgxBatch) Query() (pgx.Rows, error) {
	rows, err := b.query()
	if err != nil {
		err = b.seen(err)
		return &pgxRows{err: err}, err
	}
	return rows, nil
}

func (b *pgxBatch) query() (pgx.Rows, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errBatchClosed
	}
	var rows pgx.Rows
	var err error
	lerr := withLock(b.c.pin.conn, func() error { rows, err = b.br.Query(); return nil })
	if err = errors.Join(lerr, b.busy(err)); err != nil {
		return nil, err
	}
	// Closing them ends this result, not the batch.
	b.rows = &pgxRows{Rows: rows, s: b.s, c: b.c, ctx: b.ctx, batch: b}
	return b.rows, nil
}

// QueryRow is Query's rows scanned once, as pgx's own batch QueryRow.
func (b *pgxBatch) QueryRow() pgx.Row {
	rows, err := b.Query()
	if err != nil {
		return errPgxRow{err}
	}
	return batchRow{rows}
}

// Tx returns the transaction the batch began (pgx.Batch.BeginTx), or nil.
// Its statements run on the connection unseen by the scope, which counts
// them as raw access (see [Scope.Pgx]).
func (b *pgxBatch) Tx() pgx.Tx {
	tx := b.br.Tx()
	if tx != nil && b.s.handOutPinned(b.c) == nil {
		return nil
	}
	return tx
}

func (b *pgxBatch) Close() error { return b.seen(b.close()) }

func (b *pgxBatch) close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return b.gone
	}
	b.closed = true
	if r := b.rows; r != nil {
		// Closing the batch ends them: they read nothing more.
		r.mu.Lock()
		r.closeLocked()
		r.mu.Unlock()
	}
	err := withLock(b.c.pin.conn, func() error {
		err := b.br.Close()
		b.s.prefixDone(b.c, b.p, err, all)
		return err
	})
	b.c.pin.open.Add(-1)
	return b.busy(err)
}

func (b *pgxBatch) abort() {
	b.mu.Lock()
	r := b.rows
	b.mu.Unlock()
	if r != nil {
		r.abort() // cut short, and say so
	}
	b.close()
}

var errBatchClosed = errors.New("dbctx: batch results closed")

// batchRow is a batch's QueryRow: its rows scanned once.
type batchRow struct{ rows pgx.Rows }

func (r batchRow) Scan(dest ...any) error {
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return &pgxRows{err: b.err}, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errPgxRow(b) }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
