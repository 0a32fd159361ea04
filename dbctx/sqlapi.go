package dbctx

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net"
	"sync"
	"time"
)

// database/sql's interface on the scope: the DBTX that sqlc generates in
// its database/sql mode, and the raw access that database/sql offers.

// stmtOf returns the statement query run with args.
func (s *Scope) stmtOf(query string, args []any, h how) stmt {
	st := stmt{query: query, args: args, how: h}
	if s != nil {
		var ah how
		st.kind, ah = s.kindOf(query, args)
		st.how |= ah
	}
	return st
}

// ExecContext executes a statement that returns no rows, on the scope's
// connection.
func (s *Scope) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	args = s.guardRewriters(args)
	st := s.stmtOf(query, args, 0)
	var res sql.Result
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		if c.px == nil {
			on := c.sqlOn()
			var err error
			res, err = on.ExecContext(ctx, query, args...)
			return refusedIn(on, err)
		}
		return withLock(c.pin.conn, func() error {
			tag, err := s.pgxExec(ctx, c, p, query, sqlArgs(args))
			if err == nil {
				res = driver.RowsAffected(tag.RowsAffected())
			}
			return err
		})
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// QueryContext executes a statement that returns rows, on the scope's
// connection. The rows hold the connection until they are closed, or read
// to the end: close them before the next statement (one meanwhile fails
// with ErrConnBusy). A boundary closes them if you do not.
func (s *Scope) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	args = s.guardRewriters(args)
	st := s.stmtOf(query, args, rows)
	qctx := ctx // the rows'
	var out driver.Rows
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		if c.px == nil {
			on := c.sqlOn()
			rows, err := on.QueryContext(ctx, query, args...)
			if err != nil {
				return refusedIn(on, err)
			}
			out, err = s.openOther(qctx, c, rows)
			return err
		}
		return withLock(c.pin.conn, func() error {
			res, err := s.pgxQuery(ctx, c, p, query, sqlArgs(args), true)
			if err != nil {
				return err
			}
			// The first row is read now, as pgx's stdlib driver does: a
			// connection found dead then is replaced, and the statement
			// run again.
			more := res.Next()
			if err := res.Err(); err != nil {
				res.finish()
				return err
			}
			r := &sqlRows{m: c.px.TypeMap(), fields: res.FieldDescriptions(), res: res, ctx: qctx, preread: true, more: more}
			s.opened(c, r)
			out = r
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	rows, err := s.pool.sqlRowsOf(out)
	if err != nil {
		out.Close()
	}
	return rows, err
}

// QueryRowContext executes a statement that returns at most one row, on
// the scope's connection. The row is read before QueryRowContext returns
// (on pgx's driver): the *sql.Row holds no connection, and Scan, as with
// database/sql, reports the statement's error, or sql.ErrNoRows.
func (s *Scope) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	args = s.guardRewriters(args)
	if s == nil {
		return errRow(ErrNoScope)
	}
	st := s.stmtOf(query, args, 0)
	var out *oneRow
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, p *prefix) error {
		if c.px == nil {
			var err error
			out, err = queryRowOther(ctx, c, query, args)
			return err
		}
		return withLock(c.pin.conn, func() error {
			res, err := s.pgxQuery(ctx, c, p, query, sqlArgs(args), true)
			if err != nil {
				return err
			}
			r, cerr := readRow(c.px.TypeMap(), &res)
			if err := res.finish(); err != nil {
				return err
			}
			out = r
			return cerr
		})
	})
	if err != nil {
		return s.pool.sqlRowOf(nil, err)
	}
	return s.pool.sqlRowOf(out, nil)
}

// sqlArgs returns database/sql's arguments as pgx's stdlib driver hands
// them to pgx: the value of a sql.NamedArg (the name is not used), every
// other as it is.
func sqlArgs(args []any) []any {
	for i, a := range args {
		if _, ok := a.(sql.NamedArg); ok {
			out := make([]any, len(args))
			copy(out, args[:i])
			for j := i; j < len(args); j++ {
				if na, ok := args[j].(sql.NamedArg); ok {
					out[j] = na.Value
				} else {
					out[j] = args[j]
				}
			}
			return out
		}
	}
	return args
}

// PrepareContext prepares a statement on the scope's connection. The
// statement is closed when the connection is given back. Its executions
// run as database/sql runs them, with the settings the session carries
// from the scope's last statement, unseen by the scope: the session is
// reset before the connection is given back.
func (s *Scope) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	if s != nil && s.pool.opts.TransactionPooling {
		// A prepared statement lives on one server connection.
		return nil, fmt.Errorf("%w: PrepareContext", ErrSessionState)
	}
	st := s.stmtOf(query, nil, alone)
	st.kind |= kindState | kindCode
	var out *sql.Stmt
	err := s.exec(ctx, &st, func(ctx context.Context, c *session, _ *prefix) error {
		ps, err := guarded(c.pin.conn, func() (*sql.Stmt, error) { return c.pin.conn.PrepareContext(ctx, query) })
		if err == nil {
			c.pin.stmts = append(c.pin.stmts, ps)
			c.pin.unseen = true
			out = ps
		}
		return err
	})
	return out, err
}

// BeginTx starts a transaction on the scope's connection. Statements run
// through the scope itself while it is open are part of it too. A
// transaction still open at the next boundary is rolled back, and the
// *sql.Tx fails afterwards. When ctx ends, the transaction is rolled back,
// as database/sql does, but by the scope, between its statements: the
// connection stays the scope's. Inside [Atomic] it returns ErrInAtomic.
//
// The scope does not see the statements run on the *sql.Tx, so it counts
// them as changing session state: the session is reset before the
// connection is given back (in the next user's first round trip). The
// settings the context declares are applied after BEGIN, in a round trip
// of their own where the session does not carry them; [Atomic], whose
// statements go through the scope, sends its BEGIN and the settings with
// its first statement.
func (s *Scope) BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error) {
	if s == nil {
		return nil, ErrNoScope
	}
	// Not kindBegin, a transaction begun in SQL: database/sql's is its
	// own (see rollback), and where database/sql begins none (its
	// context ended first), none is open. Taken for one, on another
	// driver, it had the settings of the statements after it applied for
	// that transaction alone, and so lost with their own round trip. As
	// one begun in SQL, it is not run again, nor its outcome unknown.
	st := stmt{query: "BEGIN", kind: kindState | kindCode, how: alone | notQuiet | noRetry | opensTx}
	var tx *sql.Tx
	var g *beginGate // see waitGate
	ran := false
	defer func() {
		if g != nil {
			s.closeGate(g, ran)
		}
	}()
	err := s.exec(ctx, &st, func(ctx context.Context, _ *session, _ *prefix) error {
		if s.atomic > 0 {
			return ErrInAtomic
		}
		if err := s.lookFirst(ctx); err != nil {
			return err
		}
		c := s.c // lookFirst may have pinned another
		if c.pc != nil && c.state().tx == 'I' {
			// Earlier transactions are over: forget them.
			c.pin.forgetTxs()
		}
		c.openTx() // forgets those database/sql has ended
		var err error
		if tx, err = s.beginSQL(ctx, c, opts); err != nil {
			return err
		}
		c.pin.seen &^= kindBegin // database/sql ends it (see rollback)
		c.pin.unseen = true
		p, err := s.prefixFor(ctx, c, true, false)
		if err == nil {
			err = s.flushOn(ctx, c, p, tx)
		}
		if err != nil {
			tx.Rollback()
			tx = nil
		} else if g == nil && s.pool.opts.OnBegin != nil {
			g = s.openGate()
		}
		return err
	})
	if err != nil {
		ran = true
		return nil, err
	}
	if err := s.onBegin(g.through(ctx)); err != nil {
		ran = true
		tx.Rollback()
		return nil, err
	}
	ran = true
	return tx, nil
}

// beginSQL begins database/sql's transaction on c, for BeginTx. Left to
// itself, database/sql rolls a *sql.Tx back on a goroutine of its own
// when the context given to BeginTx ends; pgx, whose transaction keeps
// that context, then fails the rollback and closes the connection, and
// database/sql closes the *sql.Conn: all under the scope's feet, racing
// its own use of the connection (a *sql.Conn closed under conn.Raw even
// panics). So database/sql and pgx get ctx without its end. While BEGIN
// runs, ctx's end interrupts it as pgx would, with a past deadline on the
// socket; once it ran, the watch registered here rolls the transaction
// back, under s.mu, so after or before any statement of the scope (where
// rows of one are still open, pgx refuses the rollback, and the boundary
// ends the transaction). Under s.mu.
func (s *Scope) beginSQL(ctx context.Context, c *session, opts *sql.TxOptions) (*sql.Tx, error) {
	if ctx.Done() == nil {
		tx, err := beginTx(ctx, c.pin.conn, opts)
		if err == nil {
			c.pin.txs = append(c.pin.txs, openTx{tx, func() bool { return false }})
		}
		return tx, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var interrupted func() bool
	if c.pc != nil {
		interrupted = interruptOn(ctx, c.pc.Conn())
	}
	tx, err := beginTx(context.WithoutCancel(ctx), c.pin.conn, opts)
	if interrupted != nil && interrupted() {
		if err == nil {
			tx.Rollback()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		tx.Rollback()
	})
	c.pin.txs = append(c.pin.txs, openTx{tx, stop})
	return tx, nil
}

// beginTx is conn.BeginTx, guarded.
func beginTx(ctx context.Context, conn *sql.Conn, opts *sql.TxOptions) (*sql.Tx, error) {
	return guarded(conn, func() (*sql.Tx, error) { return conn.BeginTx(ctx, opts) })
}

// guarded returns f(), a call of one of conn's methods, where a Close of
// conn on another goroutine in the middle of the call is conn closed
// (sql.ErrConnDone), not a panic (see withLock).
func guarded[T any](conn *sql.Conn, f func() (T, error)) (v T, err error) {
	defer func() {
		if r := recover(); r != nil {
			var zero T
			v, err = zero, closedPanic(conn, r)
		}
	}()
	return f()
}

// interruptOn sets a past deadline on nc if ctx ends before the returned
// function is called, which reports whether it did; a deadline set is
// lifted then (the read it was for may have ended first).
func interruptOn(ctx context.Context, nc net.Conn) func() bool {
	var mu sync.Mutex
	set := false
	stop := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		nc.SetDeadline(time.Unix(1, 0))
		set = true
	})
	return func() bool {
		if stop() {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if set {
			nc.SetDeadline(time.Time{})
		}
		return true
	}
}

// onBegin runs Options.OnBegin in the transaction the scope has just
// begun. Not under s.mu: OnBegin runs statements through the scope.
func (s *Scope) onBegin(ctx context.Context) error {
	if h := s.pool.opts.OnBegin; h != nil {
		if err := callHook("OnBegin", func() error { return h(ctx, s) }, nil); err != nil {
			return fmt.Errorf("dbctx: OnBegin: %w", err)
		}
	}
	return nil
}

// Conn returns the scope's pinned *sql.Conn, pinning one first if needed,
// with the settings the context declares applied to its session. The
// connection stays the scope's: do not Close it. The scope sees none of
// what runs on it: the connection is discarded at the next boundary that
// lets it go (the scope's end; CloseOld, where ConnMaxAge is not 0, once
// the connection is older than it), rather than given back, and the
// *sql.Conn fails from then on.
func (s *Scope) Conn(ctx context.Context) (*sql.Conn, error) {
	var out *sql.Conn
	err := s.raw(ctx, func(c *session) { out = c.pin.conn })
	return out, err
}

// raw pins a connection for raw use, where the scope sees none of the
// statements user code runs: what is owed runs first, the scope is
// dirty, nothing run on the connection afterwards is retried, and the
// connection is discarded at the boundary, so that what user code keeps
// of it fails afterwards (see handOut).
func (s *Scope) raw(ctx context.Context, got func(*session)) error {
	st := stmt{kind: kindState | kindCode, how: alone | notQuiet}
	return s.exec(ctx, &st, func(ctx context.Context, _ *session, _ *prefix) error {
		if err := s.lookFirst(ctx); err != nil {
			return err
		}
		c := s.c // lookFirst may have pinned another
		s.handOut(c)
		got(c)
		return nil
	})
}

// lookFirst checks a connection pinned without the socket check before
// raw use, which is never retried: if it is dead and nothing has run on
// it, another is pinned, and what is owed applied on it. Under s.mu.
func (s *Scope) lookFirst(ctx context.Context) error {
	was := s.c
	c, err := s.lookedAt(ctx)
	if err != nil || c == was {
		return err
	}
	p, err := s.prefixFor(ctx, c, s.inTx(c), false)
	if err == nil {
		err = s.flush(ctx, c, p)
	}
	return err
}

// lookedAt returns the scope's connection, where it was pinned without
// the socket check (see Pool.check) and nothing has run on it, checked
// first: if it is dead, another is pinned. For what is never run again
// once sent (raw access, a batch, COPY), which a dead connection would
// fail where a statement is run again on another. Under s.mu.
func (s *Scope) lookedAt(ctx context.Context) (*session, error) {
	for s.c.pin.unchecked && !s.c.pin.used {
		c := s.c
		c.pin.unchecked = false
		if !c.dead() {
			break
		}
		s.pool.sawDeath()
		s.unpin(discardDead)
		if _, err := s.pinned(ctx); err != nil {
			return nil, err
		}
	}
	return s.c, nil
}

// handOut records that user code holds the connection itself: the scope
// sees none of what it runs there, so the session is reset, settings are
// applied again before every statement, nothing run afterwards is
// retried, and the connection is discarded at the next boundary that
// lets it go.
func (s *Scope) handOut(c *session) {
	c.pin.see(kindState | kindCode)
	c.pin.handedOut, c.pin.used = true, true
	s.disarm() // user code runs statements on it with contexts of its own
}
