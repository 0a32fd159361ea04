package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
)

// errRow returns a *sql.Row whose Err and Scan report err, for
// QueryRowContext calls refused before any connection was involved
// (ErrBusy, ErrAsyncContext). database/sql has no constructor for that, so
// it is made by a throwaway driver that answers err; only error paths pay.
func errRow(err error) *sql.Row {
	db := sql.OpenDB(errConnector{err})
	defer db.Close()
	return db.QueryRowContext(context.Background(), "")
}

type errConnector struct{ err error }

func (c errConnector) Connect(context.Context) (driver.Conn, error) { return errConn(c), nil }
func (c errConnector) Driver() driver.Driver                        { return errDriver{} }

type errDriver struct{}

func (errDriver) Open(string) (driver.Conn, error) {
	return nil, errors.New("dbctx: not a real driver")
}

type errConn struct{ err error }

func (c errConn) Prepare(string) (driver.Stmt, error) { return nil, c.err }
func (c errConn) Close() error                        { return nil }
func (c errConn) Begin() (driver.Tx, error)           { return nil, c.err }

func (c errConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return nil, c.err
}
