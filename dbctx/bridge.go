package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// The database/sql results of a pgx connection.
//
// On a pgx connection the Scope runs every statement through pgx itself,
// under database/sql's lock of the pinned *sql.Conn, so that what is owed
// before a statement (prefix.go) goes out in the same round trip, and a
// row is read before QueryRowContext returns. database/sql makes *sql.Rows
// and *sql.Row only from a driver's results, so the results are handed
// to a database/sql pool of the Pool's own, the bridge, whose driver
// returns them as they are: database/sql's Scan, ColumnTypes and Close
// then work as on any connection. The rows convert values as pgx's stdlib
// driver does (sqlRows, below, follows its Rows), and ask the server for
// the same result formats, so a Scan sees the same driver.Value.

// sqlResultFormats are the result formats pgx's stdlib driver asks for:
// binary for the types whose binary form it converts itself, text for
// every other.
var sqlResultFormats = pgx.QueryResultFormatsByOID{
	pgtype.BoolOID:        1,
	pgtype.ByteaOID:       1,
	pgtype.CIDOID:         1,
	pgtype.DateOID:        1,
	pgtype.Float4OID:      1,
	pgtype.Float8OID:      1,
	pgtype.Int2OID:        1,
	pgtype.Int4OID:        1,
	pgtype.Int8OID:        1,
	pgtype.OIDOID:         1,
	pgtype.TimestampOID:   1,
	pgtype.TimestamptzOID: 1,
	pgtype.XIDOID:         1,
}

// The bridge is a *sql.DB of the pool's own, made on first use. Rows that
// stream from the connection each take a connection of it, so that one
// waiting on the network holds up no other. The rows of QueryRowContext,
// read already, go through a few *sql.Conn of it, taken in turn: a
// *sql.Conn skips the *sql.DB's check-out and give-back.
type bridge struct {
	db    *sql.DB
	conns []*sql.Conn
	next  atomic.Uint32
}

// bridge returns the pool's bridge, made on first use; nil once the pool
// is closed.
func (p *Pool) bridge() *bridge {
	if p.closed.Load() {
		return nil
	}
	p.bridgeOnce.Do(func() {
		db := sql.OpenDB(bridgeConnector{})
		db.SetMaxIdleConns(2 * p.opts.MaxWorkers)
		b := &bridge{db: db, conns: make([]*sql.Conn, 2*runtime.GOMAXPROCS(0))}
		for i := range b.conns {
			b.conns[i], _ = db.Conn(context.Background()) // the connector cannot fail
		}
		p.bridgeDB = b
	})
	return p.bridgeDB
}

// closeBridge closes the bridge (Pool.Close). Its *sql.Conns are left to
// the garbage collector: closing one would wait for a *sql.Row of it that
// user code never scanned.
func (p *Pool) closeBridge() {
	p.bridgeOnce.Do(func() {}) // none made from now on
	if p.bridgeDB != nil {
		p.bridgeDB.db.Close()
	}
}

// sqlRowsOf returns r as *sql.Rows.
func (p *Pool) sqlRowsOf(r driver.Rows) (*sql.Rows, error) {
	if b := p.bridge(); b != nil {
		rows, err := b.db.QueryContext(context.Background(), "", r)
		if err == nil || !p.closed.Load() {
			return rows, err
		}
		// Closed under it (database/sql refuses before it reads r).
	}
	// The pool is closed, and a scope that held a slot runs on (Close
	// lets it finish): its statement ran, and its rows are the caller's.
	db := lastBridge()
	defer db.Close() // the rows keep their connection until closed
	return db.QueryContext(context.Background(), "", r)
}

// lastBridge is a bridge *sql.DB for the rows of one statement of a pool
// closed already.
func lastBridge() *sql.DB { return sql.OpenDB(bridgeConnector{}) }

// sqlRowOf returns r as *sql.Row, or err as a *sql.Row whose Scan returns it.
func (p *Pool) sqlRowOf(r *oneRow, err error) *sql.Row {
	b := p.bridge()
	if b == nil {
		if err != nil {
			return errRow(err)
		}
		db := lastBridge() // see sqlRowsOf
		defer db.Close()
		return db.QueryRowContext(context.Background(), "", r)
	}
	c := b.conns[b.next.Add(1)%uint32(len(b.conns))]
	if err != nil {
		return c.QueryRowContext(context.Background(), "", err)
	}
	return c.QueryRowContext(context.Background(), "", r)
}

type bridgeConnector struct{}

func (bridgeConnector) Connect(context.Context) (driver.Conn, error) { return bridgeConn{}, nil }
func (bridgeConnector) Driver() driver.Driver                        { return bridgeDriver{} }

type bridgeDriver struct{}

func (bridgeDriver) Open(string) (driver.Conn, error) {
	return nil, errors.New("dbctx: the bridge is not a driver")
}

type bridgeConn struct{}

func (bridgeConn) Prepare(string) (driver.Stmt, error) { return nil, errBridge }
func (bridgeConn) Close() error                        { return nil }
func (bridgeConn) Begin() (driver.Tx, error)           { return nil, errBridge }

func (bridgeConn) CheckNamedValue(*driver.NamedValue) error { return nil }

// QueryContext returns its one argument: the result to hand out, or the
// error.
func (bridgeConn) QueryContext(_ context.Context, _ string, args []driver.NamedValue) (driver.Rows, error) {
	switch v := args[0].Value.(type) {
	case *sqlRows:
		return v, nil
	case *otherRows:
		return v, nil
	case *oneRow:
		return v, nil
	case error:
		if errors.Is(v, driver.ErrBadConn) {
			// database/sql would try another bridge connection; the
			// statement's own connection is what failed.
			return nil, badConnError{v}
		}
		return nil, v
	}
	return nil, errBridge
}

var errBridge = errors.New("dbctx: the bridge only carries results")

// badConnError keeps driver.ErrBadConn from database/sql's retries on the
// bridge, and from errors.Is; the rest of the error's chain
// (ErrSessionLost, ErrUnavailable, the driver's own error) stays what
// errors.Is and errors.As find.
type badConnError struct{ err error }

func (e badConnError) Error() string { return e.err.Error() }

func (e badConnError) Is(target error) bool {
	return target != driver.ErrBadConn && errors.Is(e.err, target)
}

func (e badConnError) As(target any) bool { return errors.As(e.err, target) }

// sqlRows is a pgx result as database/sql's driver.Rows, converted as
// pgx's stdlib driver converts it (its Rows: the value of each column by
// its type, the column types).
//
// The rows stream from the connection, read under its lock.
type sqlRows struct {
	m       *pgtype.Map
	fields  []pgconn.FieldDescription
	funcs   []rowValueFunc
	names   []string
	res     result
	ctx     context.Context // res's statement's (see Scope.rowsFailed)
	preread bool            // res's first row was read (more: what Next said)
	more    bool

	mu     sync.Mutex // Close may come from a boundary while a Next runs
	closed bool
	cut    bool // closed by a boundary (abort), not read to the end
}

// oneRow is the row of a QueryRowContext, read and converted before the
// statement returned (as sqlRows converts it), or none.
type oneRow struct {
	names  []string
	row    []driver.Value // nil: no row
	vals   [2]driver.Value
	nameAt [2]string // names' array, for up to two columns
	read   bool
}

func (r *oneRow) Columns() []string { return r.names }
func (r *oneRow) Close() error      { return nil }

func (r *oneRow) Next(dest []driver.Value) error {
	if r.read || r.row == nil {
		return io.EOF
	}
	r.read = true
	copy(dest, r.row)
	return nil
}

type rowValueFunc func(src []byte) (driver.Value, error)

func (r *sqlRows) Columns() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.columns()
}

// columns returns the column names, read from the fields the first time.
// Under r.mu.
func (r *sqlRows) columns() []string {
	if r.names == nil {
		r.names = make([]string, len(r.fields))
		for i, fd := range r.fields {
			r.names[i] = fd.Name
		}
	}
	return r.names
}

func (r *sqlRows) Next(dest []driver.Value) error {
	err, failed := r.next(dest)
	if failed {
		err = r.res.s.rowsFailed(r.ctx, r.res.c, err)
	}
	return err // io.EOF itself at the end: database/sql compares it
}

// next is Next under r.mu; failed says err is the error the rows ended
// with.
func (r *sqlRows) next(dest []driver.Value) (err error, failed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		if r.cut {
			return errRowsCut, false
		}
		return io.EOF, false
	}
	lerr := withLock(r.res.c.pin.conn, func() error {
		more := r.more
		if r.preread {
			r.preread = false
		} else {
			more = r.res.Next()
		}
		if !more {
			err = r.res.Err()
			failed = err != nil
			if err == nil {
				err = io.EOF
			}
			return nil
		}
		err = r.convert(dest, r.res.RawValues())
		return nil
	})
	if lerr != nil {
		return lerr, true
	}
	return err, failed
}

func (r *sqlRows) Close() error {
	err := r.close()
	if err != nil {
		err = r.res.s.rowsFailed(r.ctx, r.res.c, err)
	}
	if errors.Is(err, driver.ErrBadConn) {
		err = badConnError{err}
	}
	return err
}

// close is Close, from a boundary too (abort): it does not tell the
// scope.
func (r *sqlRows) close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	return r.res.end()
}

// readRow reads the one row of a QueryRowContext from res (nil if there is
// none): converted now, while its bytes are the connection's current
// ones, with the column names.
func readRow(m *pgtype.Map, res *result) (*oneRow, error) {
	r := &oneRow{}
	fds := res.FieldDescriptions()
	if len(fds) <= len(r.nameAt) {
		r.names = r.nameAt[:len(fds)]
	} else {
		r.names = make([]string, len(fds))
	}
	for i, fd := range fds {
		r.names[i] = fd.Name
	}
	if !res.Next() {
		return r, nil
	}
	r.row = r.vals[:0]
	if len(fds) > len(r.vals) {
		r.row = make([]driver.Value, 0, len(fds))
	}
	for i, src := range res.RawValues() {
		if src == nil {
			r.row = append(r.row, nil)
			continue
		}
		v, err := convertValue(m, &fds[i], src)
		if err != nil {
			return r, fmt.Errorf("convert field %d failed: %w", i, err)
		}
		r.row = append(r.row, v)
	}
	return r, nil
}

// abort ends the rows from a boundary: whoever reads on is told they were
// cut short (errRowsCut), and what database/sql may still ask of their
// columns is kept, since the connection's next statement reuses the
// fields pgconn described them with.
func (r *sqlRows) abort() {
	r.mu.Lock()
	if !r.closed {
		r.cut = true
		r.columns()
		r.fields = slices.Clone(r.fields)
	}
	r.mu.Unlock()
	r.close()
}

// convert converts one row of raw values into dest.
func (r *sqlRows) convert(dest []driver.Value, raw [][]byte) error {
	r.initFuncs()
	for i, rv := range raw {
		if rv == nil {
			dest[i] = nil
			continue
		}
		v, err := r.funcs[i](rv)
		if err != nil {
			return fmt.Errorf("convert field %d failed: %w", i, err)
		}
		dest[i] = v
	}
	return nil
}

// The rest of sqlRows follows the Rows of github.com/jackc/pgx/v5/stdlib
// (MIT License, Copyright (c) 2013-2021 Jack Christensen), so that a Scan
// through a Scope sees what it would see through the driver.

// initFuncs prepares the database/sql representation of each column.
func (r *sqlRows) initFuncs() {
	if r.funcs != nil {
		return
	}
	m := r.m
	r.funcs = make([]rowValueFunc, len(r.fields))
	for i, fd := range r.fields {
		oid, format := fd.DataTypeOID, fd.Format
		switch oid {
		case pgtype.BoolOID:
			var d bool
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return d, err }
		case pgtype.ByteaOID:
			var d []byte
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return d, err }
		case pgtype.CIDOID, pgtype.OIDOID, pgtype.XIDOID:
			var d pgtype.Uint32
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) {
				if err := plan.Scan(src, &d); err != nil {
					return nil, err
				}
				return d.Value()
			}
		case pgtype.DateOID:
			var d pgtype.Date
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) {
				if err := plan.Scan(src, &d); err != nil {
					return nil, err
				}
				return d.Value()
			}
		case pgtype.Float4OID:
			var d float32
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return float64(d), err }
		case pgtype.Float8OID:
			var d float64
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return d, err }
		case pgtype.Int2OID:
			var d int16
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return int64(d), err }
		case pgtype.Int4OID:
			var d int32
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return int64(d), err }
		case pgtype.Int8OID:
			var d int64
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return d, err }
		case pgtype.JSONOID, pgtype.JSONBOID, pgtype.XMLOID:
			var d []byte
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) {
				if err := plan.Scan(src, &d); err != nil {
					return nil, err
				}
				return d, nil
			}
		case pgtype.TimestampOID:
			var d pgtype.Timestamp
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) {
				if err := plan.Scan(src, &d); err != nil {
					return nil, err
				}
				return d.Value()
			}
		case pgtype.TimestamptzOID:
			var d pgtype.Timestamptz
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) {
				if err := plan.Scan(src, &d); err != nil {
					return nil, err
				}
				return d.Value()
			}
		default:
			var d string
			plan := m.PlanScan(oid, format, &d)
			r.funcs[i] = func(src []byte) (driver.Value, error) { err := plan.Scan(src, &d); return d, err }
		}
	}
}

// convertValue converts one non-NULL value as initFuncs's functions do,
// without making them: for the one row of a QueryRowContext. The common
// types are decoded here; the rest as initFuncs plans them.
func convertValue(m *pgtype.Map, fd *pgconn.FieldDescription, src []byte) (driver.Value, error) {
	oid, format := fd.DataTypeOID, fd.Format
	switch {
	case format == pgtype.TextFormatCode && (oid == pgtype.TextOID || oid == pgtype.VarcharOID || oid == pgtype.NameOID || oid == pgtype.BPCharOID):
		return string(src), nil
	case format == pgtype.BinaryFormatCode && oid == pgtype.Int4OID && len(src) == 4:
		return int64(int32(binary.BigEndian.Uint32(src))), nil
	case format == pgtype.BinaryFormatCode && oid == pgtype.Int8OID && len(src) == 8:
		return int64(binary.BigEndian.Uint64(src)), nil
	case format == pgtype.BinaryFormatCode && oid == pgtype.Int2OID && len(src) == 2:
		return int64(int16(binary.BigEndian.Uint16(src))), nil
	case format == pgtype.BinaryFormatCode && oid == pgtype.BoolOID && len(src) == 1:
		return src[0] == 1, nil
	}
	r := sqlRows{m: m, fields: []pgconn.FieldDescription{*fd}}
	r.initFuncs()
	return r.funcs[0](src)
}

// ColumnTypeDatabaseTypeName returns the database system type name. If the
// name is unknown the OID is returned.
func (r *sqlRows) ColumnTypeDatabaseTypeName(index int) string {
	fd := r.field(index)
	if dt, ok := r.m.TypeForOID(fd.DataTypeOID); ok {
		return strings.ToUpper(dt.Name)
	}
	return strconv.FormatInt(int64(fd.DataTypeOID), 10)
}

// field returns the description of column index (see abort).
func (r *sqlRows) field(index int) pgconn.FieldDescription {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fields[index]
}

const varHeaderSize = 4

// ColumnTypeLength returns the length of a variable length column type.
func (r *sqlRows) ColumnTypeLength(index int) (int64, bool) {
	fd := r.field(index)
	switch fd.DataTypeOID {
	case pgtype.TextOID, pgtype.ByteaOID:
		return math.MaxInt64, true
	case pgtype.VarcharOID, pgtype.BPCharOID:
		return int64(fd.TypeModifier - varHeaderSize), true
	case pgtype.VarbitOID:
		return int64(fd.TypeModifier), true
	default:
		return 0, false
	}
}

// ColumnTypePrecisionScale returns the precision and scale of a numeric
// column.
func (r *sqlRows) ColumnTypePrecisionScale(index int) (precision, scale int64, ok bool) {
	fd := r.field(index)
	switch fd.DataTypeOID {
	case pgtype.NumericOID:
		mod := fd.TypeModifier - varHeaderSize
		return int64((mod >> 16) & 0xffff), int64(mod & 0xffff), true
	default:
		return 0, 0, false
	}
}

// ColumnTypeScanType returns the value type that can be used to scan
// types into.
func (r *sqlRows) ColumnTypeScanType(index int) reflect.Type {
	switch r.field(index).DataTypeOID {
	case pgtype.Float8OID:
		return reflect.TypeFor[float64]()
	case pgtype.Float4OID:
		return reflect.TypeFor[float32]()
	case pgtype.Int8OID:
		return reflect.TypeFor[int64]()
	case pgtype.Int4OID:
		return reflect.TypeFor[int32]()
	case pgtype.Int2OID:
		return reflect.TypeFor[int16]()
	case pgtype.BoolOID:
		return reflect.TypeFor[bool]()
	case pgtype.NumericOID:
		return reflect.TypeFor[float64]()
	case pgtype.DateOID, pgtype.TimestampOID, pgtype.TimestamptzOID:
		return reflect.TypeFor[time.Time]()
	case pgtype.ByteaOID:
		return reflect.TypeFor[[]byte]()
	default:
		return reflect.TypeFor[string]()
	}
}

// copyFields copies field descriptions out of pgconn's buffer, which the
// next statement reuses.
func copyFields(fds []pgconn.FieldDescription) []pgconn.FieldDescription {
	out := make([]pgconn.FieldDescription, len(fds))
	copy(out, fds)
	return out
}
