package dbctx

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pgx's own interface on the scope: Exec, Query, QueryRow, CopyFrom and
// SendBatch, the DBTX that sqlc generates with sql_package "pgx/v5". They
// run on the *pgx.Conn under the scope's pinned connection with what the
// database/sql methods have: the lazy slot and pin, the async guard, the
// scope's cancellation, the session-state tracking and reset, the safe
// retry and the statement timing.

// Exec runs a statement through pgx's interface on the scope's connection
// and returns its command tag.
func (s *Scope) Exec(ctx context.Context, query string, args ...any) (pgconn.CommandTag, error) {
	start := monotonic()
	c, err := s.usePgx(ctx, query)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := run(ctx, s, c, true, func(ctx context.Context, c *sql.Conn) (tag pgconn.CommandTag, err error) {
		lerr := withLock(c, func() { tag, err = s.sock.px.Exec(ctx, query, args...) })
		return tag, cmp.Or(lerr, err)
	})
	s.account(start)
	return tag, err
}

// Query runs a statement that returns rows through pgx's interface on the
// scope's connection. Close the rows before the next statement; a
// boundary closes them if you do not. As with database/sql's driver, the
// first row is read before Query returns, so that a connection found dead
// then can be replaced and the statement run again (see [Scope]).
func (s *Scope) Query(ctx context.Context, query string, args ...any) (pgx.Rows, error) {
	start := monotonic()
	c, err := s.usePgx(ctx, query)
	if err != nil {
		return &pgxRows{err: err}, err
	}
	rows, err := run(ctx, s, c, true, func(ctx context.Context, c *sql.Conn) (rows *pgxRows, err error) {
		lerr := withLock(c, func() {
			r, qerr := s.sock.px.Query(ctx, query, args...)
			if qerr == nil {
				more := r.Next()
				if qerr = r.Err(); qerr == nil {
					rows = &pgxRows{Rows: r, s: s, conn: c, preread: true, more: more}
					return
				}
			}
			r.Close()
			err = qerr
		})
		return rows, cmp.Or(lerr, err)
	})
	s.account(start)
	if err != nil {
		return &pgxRows{err: err}, err
	}
	s.prows = rows
	return rows, nil
}

// QueryRow runs a statement that returns at most one row through pgx's
// interface; its error, or pgx.ErrNoRows, comes from Scan, which releases
// the row.
func (s *Scope) QueryRow(ctx context.Context, query string, args ...any) pgx.Row {
	rows, err := s.Query(ctx, query, args...)
	if err != nil {
		return errPgxRow{err}
	}
	return (*pgxRow)(rows.(*pgxRows))
}

// CopyFrom copies rows into a table with the COPY protocol, through pgx's
// interface on the scope's connection. It is never run again on another
// connection: rowSrc may have been read.
func (s *Scope) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, rowSrc pgx.CopyFromSource) (int64, error) {
	start := monotonic()
	c, err := s.usePgx(ctx, "")
	if err != nil {
		return 0, err
	}
	first := !s.used
	var n int64
	sctx := s.stmtCtx(ctx, true)
	lerr := withLock(c, func() { n, err = s.sock.px.CopyFrom(sctx, table, columns, rowSrc) })
	err = s.observe(ctx, cmp.Or(lerr, err), first)
	s.ranOn()
	s.account(start)
	return n, err
}

// SendBatch sends the queued queries of b in one round trip through pgx's
// interface on the scope's connection. Each query is read for session
// state as a statement of its own would be; the batch is never run again
// on another connection. Close the results before the next statement; a
// boundary closes them if you do not.
func (s *Scope) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	start := monotonic()
	if s != nil && s.pool.opts.TransactionPooling {
		for _, q := range b.QueuedQueries {
			if s.pool.notes.kind(q.SQL)&(kindSession|kindSeqRead) != 0 {
				return errBatch{sessionStateError(q.SQL)}
			}
		}
	}
	c, err := s.usePgx(ctx, "")
	if err != nil {
		return errBatch{err}
	}
	for _, q := range b.QueuedQueries {
		s.note(q.SQL)
	}
	br := &pgxBatch{s: s, ctx: ctx, conn: c, first: !s.used}
	sctx := s.stmtCtx(ctx, true)
	if err := withLock(c, func() { br.br = s.sock.px.SendBatch(sctx, b) }); err != nil {
		return errBatch{err}
	}
	s.ranOn()
	s.extra().batch = br
	s.account(start)
	return br
}

// usePgx is use for pgx's interface: it needs pgx's stdlib driver.
func (s *Scope) usePgx(ctx context.Context, query string) (*sql.Conn, error) {
	c, err := s.use(ctx, query)
	if err != nil {
		return nil, err
	}
	if s.sock == nil || s.sock.px == nil {
		return nil, fmt.Errorf("dbctx: Scope's pgx methods: %w", errNotPgx)
	}
	return c, nil
}

// withLock runs f while holding database/sql's lock of c, as database/sql's
// own statements do: a transaction of c (Atomic's, BeginTx's) is rolled
// back by database/sql on a goroutine of its own when its context ends,
// and must not use the connection while a statement of pgx's interface,
// or what its rows and batch results read afterwards, does. It returns
// database/sql's error where c is closed (f does not run then).
func withLock(c *sql.Conn, f func()) error {
	return c.Raw(func(any) error {
		f()
		return nil
	})
}

// closePgx closes the rows and batch results of pgx's interface left open.
func (s *Scope) closePgx() {
	if s.prows != nil {
		s.prows.Close()
		s.prows = nil
	}
	if x := s.x; x != nil && x.batch != nil {
		x.batch.done = true
		x.batch.Close()
		x.batch = nil
	}
}

// pgxRows is what Query returns: pgx's rows, of which the first has been
// read already (preread, more: what that Next returned), or an error.
type pgxRows struct {
	pgx.Rows
	s       *Scope
	conn    *sql.Conn // whose lock Next and Close take (see withLock)
	err     error
	preread bool
	more    bool
}

func (r *pgxRows) Next() bool {
	if r.Rows == nil {
		return false
	}
	if r.preread {
		r.preread = false
		return r.more
	}
	var more bool
	if err := withLock(r.conn, func() { more = r.Rows.Next() }); err != nil {
		r.err = err // the connection is gone (see Err)
	}
	return more
}

func (r *pgxRows) Err() error {
	if r.Rows == nil || r.err != nil {
		return r.err
	}
	return r.Rows.Err()
}

func (r *pgxRows) Close() {
	if r.Rows != nil {
		withLock(r.conn, r.Rows.Close)
	}
}

func (r *pgxRows) CommandTag() pgconn.CommandTag {
	if r.Rows == nil {
		return pgconn.CommandTag{}
	}
	return r.Rows.CommandTag()
}

func (r *pgxRows) FieldDescriptions() []pgconn.FieldDescription {
	if r.Rows == nil {
		return nil
	}
	return r.Rows.FieldDescriptions()
}

func (r *pgxRows) Values() ([]any, error) {
	if r.Rows == nil {
		return nil, r.err
	}
	return r.Rows.Values()
}

func (r *pgxRows) RawValues() [][]byte {
	if r.Rows == nil {
		return nil
	}
	return r.Rows.RawValues()
}

// Conn returns the *pgx.Conn the rows came from while the scope pins it
// (nil afterwards, when it may be another scope's), and counts it as raw
// access: what runs on it unseen, the session is reset for.
func (r *pgxRows) Conn() *pgx.Conn {
	if r.Rows == nil || r.s.conn != r.conn {
		return nil
	}
	r.s.rawAccess()
	return r.Rows.Conn()
}

// pgxRow is QueryRow's result: the rows of Query, scanned once.
type pgxRow pgxRows

// Scan reads the row into dest and closes it, as pgx's own QueryRow does.
func (r *pgxRow) Scan(dest ...any) error {
	rows := (*pgxRows)(r)
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := rows.Scan(dest...); err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

type errPgxRow struct{ err error }

func (r errPgxRow) Scan(...any) error { return r.err }

// pgxBatch is SendBatch's results: an error that shows the connection
// unusable is looked at as a statement's would be (see Scope.observe),
// while the scope has not moved on (done: a boundary closed the batch).
type pgxBatch struct {
	s      *Scope
	ctx    context.Context
	conn   *sql.Conn // whose lock reading the results takes (see withLock)
	br     pgx.BatchResults
	first  bool
	closed bool
	done   bool
}

func (b *pgxBatch) Exec() (tag pgconn.CommandTag, err error) {
	lerr := withLock(b.conn, func() { tag, err = b.br.Exec() })
	return tag, b.observe(cmp.Or(lerr, err))
}

func (b *pgxBatch) Query() (pgx.Rows, error) {
	var rows pgx.Rows
	var err error
	lerr := withLock(b.conn, func() { rows, err = b.br.Query() })
	if err = cmp.Or(lerr, err); err != nil {
		err = b.observe(err)
		return &pgxRows{err: err}, err
	}
	return &pgxRows{Rows: rows, s: b.s, conn: b.conn}, nil
}

// QueryRow is Query's rows scanned once, as pgx's own batch QueryRow.
func (b *pgxBatch) QueryRow() pgx.Row {
	rows, err := b.Query()
	if err != nil {
		return errPgxRow{err}
	}
	return (*pgxRow)(rows.(*pgxRows))
}

// Tx returns the transaction the batch began (pgx.Batch.BeginTx), or nil.
// Its statements run on the connection unseen by the scope, which counts
// them as raw access: the session is reset before the connection is given
// back, as after a *sql.Tx of Scope.BeginTx.
func (b *pgxBatch) Tx() pgx.Tx {
	tx := b.br.Tx()
	if tx != nil && !b.done && b.s.conn == b.conn {
		b.s.rawAccess()
	}
	return tx
}

func (b *pgxBatch) Close() error {
	if b.closed {
		return nil
	}
	b.closed = true
	var err error
	if lerr := withLock(b.conn, func() { err = b.br.Close() }); lerr != nil && !b.done {
		err = lerr
	}
	if b.done {
		return err
	}
	b.s.x.batch = nil
	return b.s.observe(b.ctx, err, b.first)
}

func (b *pgxBatch) observe(err error) error {
	if err == nil || b.done || b.closed {
		return err
	}
	return b.s.observe(b.ctx, err, b.first)
}

type errBatch struct{ err error }

func (b errBatch) Exec() (pgconn.CommandTag, error) { return pgconn.CommandTag{}, b.err }
func (b errBatch) Query() (pgx.Rows, error)         { return &pgxRows{err: b.err}, b.err }
func (b errBatch) QueryRow() pgx.Row                { return errPgxRow(b) }
func (b errBatch) Close() error                     { return b.err }
func (b errBatch) Tx() pgx.Tx                       { return nil }
