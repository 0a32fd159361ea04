package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"sync"
)

// The database/sql results of another driver than pgx's.
//
// database/sql lets a statement reach the driver while rows of an earlier
// one on the same *sql.Conn are open (it locks the driver's connection
// for each call, and not for the rows' life), and reads the rows without
// that lock: on a scope shared by goroutines, one reading rows while
// another runs a statement drives the driver's connection from both at
// once, which no driver allows (pgx's panics). So the scope hands out the
// driver's rows as its own (otherRows, through the bridge), counted open
// until closed or read to the end as a pgx connection's are: a statement
// of the scope meanwhile fails with ErrConnBusy. Where the scope has
// handed out what drives the connection from elsewhere (a *sql.Tx, a
// *sql.Stmt, the *sql.Conn: see session.shared), which it cannot hold
// back, the rows are read to the end before QueryContext returns, and
// hold nothing. QueryRowContext always reads its row before it returns,
// so that a *sql.Row holds nothing.

// sqlRunner is what a statement of the scope runs on, on another driver
// (see session.sqlOn).
type sqlRunner interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// sqlOn returns what a statement of the scope runs on, on another
// driver: the transaction of BeginTx still open, if any, else the
// *sql.Conn. database/sql closes a *sql.Conn whose driver says a
// statement found the connection bad (driver.ErrBadConn, which pgx's
// stdlib also says for a connection busy with the rows of the *sql.Tx),
// and that close waits for the *sql.Tx to end: for ever where its rows
// are the caller's to close, on the caller's goroutine. On the *sql.Tx
// the error comes back (see refusedIn), and the connection stays. And a
// transaction that ends between the settings and the statement fails the
// statement (sql.ErrTxDone, see Scope.execLocked) rather than let it run
// without them. Under s.mu.
func (c *session) sqlOn() sqlRunner {
	if tx := c.openTx(); tx != nil {
		return tx
	}
	return c.pin.conn
}

// refusedIn returns err, of a statement run on on: driver.ErrBadConn in
// BeginTx's transaction is errTxRefused.
func refusedIn(on sqlRunner, err error) error {
	if _, ok := on.(*sql.Tx); ok && errors.Is(err, driver.ErrBadConn) {
		return errTxRefused
	}
	return err
}

// otherRows is a driver's rows, read through its *sql.Rows value by
// value as the driver gives them (a Scan into *any keeps the driver's
// value, a []byte copied), for database/sql's Scan to convert as it
// would have: streamed, or read already (buf).
type otherRows struct {
	rows  *sql.Rows
	c     *session        // nil where read already: not counted open
	s     *Scope          // the scope that handed them out, where c is set
	ctx   context.Context // their statement's, where c is set (see Scope.rowsFailed)
	names []string
	vals  []any
	ptrs  []any            // pointers to vals, for Scan
	buf   [][]driver.Value // the rows read already, where c is nil

	mu     sync.Mutex // Close may come from a boundary while a Next runs
	types  []*sql.ColumnType
	closed bool
	cut    bool // closed by a boundary, not read to the end
}

// openOther returns the rows of a driver's statement on c as the scope's
// own: counted open on c, or, where c is shared, read to the end.
// ctx is the statement's.
func (s *Scope) openOther(ctx context.Context, c *session, rows *sql.Rows) (*otherRows, error) {
	names, err := rows.Columns()
	if err != nil {
		rows.Close()
		return nil, err
	}
	r := &otherRows{rows: rows, names: names, vals: make([]any, len(names)), ptrs: make([]any, len(names))}
	for i := range r.vals {
		r.ptrs[i] = &r.vals[i]
	}
	if c.shared() {
		return r, r.readAll()
	}
	r.c, r.s, r.ctx = c, s, ctx
	s.opened(c, r)
	return r, nil
}

// readAll reads the rows to the end into r.buf, with their column types,
// and closes the driver's.
func (r *otherRows) readAll() error {
	defer r.rows.Close()
	r.columnTypes()
	for r.rows.Next() {
		row := make([]driver.Value, len(r.vals))
		if err := r.next(row); err != nil {
			return err
		}
		r.buf = append(r.buf, row)
	}
	return errors.Join(r.rows.Err(), r.rows.Close())
}

// next scans the driver's current row into dest.
func (r *otherRows) next(dest []driver.Value) error {
	if err := r.rows.Scan(r.ptrs...); err != nil {
		return err
	}
	for i, v := range r.vals {
		dest[i] = v
		r.vals[i] = nil
	}
	return nil
}

func (r *otherRows) Columns() []string { return r.names }

func (r *otherRows) Next(dest []driver.Value) error {
	err, failed := r.step(dest)
	if failed {
		err = r.s.rowsFailed(r.ctx, r.c, err)
	}
	return err
}

// step is Next under r.mu; failed says err is the error the driver's
// rows ended with.
func (r *otherRows) step(dest []driver.Value) (err error, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed && r.cut:
		return errRowsCut, false
	case r.closed:
		return io.EOF, false
	case r.c == nil:
		if len(r.buf) == 0 {
			return io.EOF, false
		}
		copy(dest, r.buf[0])
		r.buf[0], r.buf = nil, r.buf[1:]
		return nil, false
	case !r.rows.Next():
		if err := r.rows.Err(); err != nil {
			return err, true
		}
		return io.EOF, false
	}
	return r.next(dest), false
}

func (r *otherRows) Close() error {
	err := r.close()
	if err != nil {
		err = r.s.rowsFailed(r.ctx, r.c, err)
	}
	if errors.Is(err, driver.ErrBadConn) {
		err = badConnError{err}
	}
	return err
}

// close is Close, from a boundary too (abort): it does not tell the
// scope.
func (r *otherRows) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	if r.c == nil {
		return nil
	}
	r.c.pin.open.Add(-1)
	return errors.Join(r.rows.Err(), r.rows.Close())
}

// abort ends the rows from a boundary: whoever reads on is told they were
// cut short (errRowsCut); their column types are read first, for
// database/sql to ask of them still.
func (r *otherRows) abort() {
	r.mu.Lock()
	if !r.closed {
		r.cut = true
		r.columnTypes()
	}
	r.mu.Unlock()
	r.close()
}

// columnTypes returns the driver's column types, read the first time
// (none once its rows are closed). Under r.mu.
func (r *otherRows) columnTypes() []*sql.ColumnType {
	if r.types == nil {
		r.types, _ = r.rows.ColumnTypes()
		if r.types == nil {
			r.types = []*sql.ColumnType{}
		}
	}
	return r.types
}

// columnType returns column index's type, or nil.
func (r *otherRows) columnType(index int) *sql.ColumnType {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ts := r.columnTypes(); index < len(ts) {
		return ts[index]
	}
	return nil
}

func (r *otherRows) ColumnTypeDatabaseTypeName(index int) string {
	if ct := r.columnType(index); ct != nil {
		return ct.DatabaseTypeName()
	}
	return ""
}

func (r *otherRows) ColumnTypeLength(index int) (int64, bool) {
	if ct := r.columnType(index); ct != nil {
		return ct.Length()
	}
	return 0, false
}

func (r *otherRows) ColumnTypeNullable(index int) (nullable, ok bool) {
	if ct := r.columnType(index); ct != nil {
		return ct.Nullable()
	}
	return false, false
}

func (r *otherRows) ColumnTypePrecisionScale(index int) (precision, scale int64, ok bool) {
	if ct := r.columnType(index); ct != nil {
		return ct.DecimalSize()
	}
	return 0, 0, false
}

func (r *otherRows) ColumnTypeScanType(index int) reflect.Type {
	if ct := r.columnType(index); ct != nil && ct.ScanType() != nil {
		return ct.ScanType()
	}
	return reflect.TypeFor[any]()
}

// queryRowOther runs a QueryRowContext on another driver's connection and
// reads its row (nil if there is none).
func queryRowOther(ctx context.Context, c *session, query string, args []any) (*oneRow, error) {
	on := c.sqlOn()
	rows, err := on.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, refusedIn(on, err)
	}
	defer rows.Close()
	names, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	r := &oneRow{names: names}
	if rows.Next() {
		vals := make([]any, len(names))
		ptrs := make([]any, len(names))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		r.row = make([]driver.Value, len(vals))
		for i, v := range vals {
			r.row[i] = v
		}
	}
	// The rest unread, as database/sql's QueryRow leaves it; Close reads
	// the error of a statement that failed after its first row.
	if err := errors.Join(rows.Close(), rows.Err()); err != nil {
		return nil, err
	}
	return r, nil
}
