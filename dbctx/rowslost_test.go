package dbctx_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/jackc/pgx/v5"
)

// Rows whose connection fails while they are read (a backend killed, the
// TCP connection cut) lose the scope's session as a statement's failure
// does: their error is ErrSessionLost wrapping the driver's, and the scope
// drops the connection at once, as the error is seen. Rows reported the
// driver's error alone (57P01, an unexpected EOF), and the scope learned
// of the loss only at its next statement.
func TestRowsSessionLost(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills the scope's own backend")
	// More than the socket's buffers hold: the backend is still sending
	// when it is killed.
	const big = "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g"
	// Each reads one row, has the connection fail, and reads on (or
	// closes the rows, which reads them to the end): the rows' error.
	readers := map[string]func(ctx context.Context, s *dbctx.Scope, fail func()) error{
		"Query": func(ctx context.Context, s *dbctx.Scope, fail func()) error {
			rows, err := s.Query(ctx, big)
			if err != nil {
				return err
			}
			defer rows.Close()
			rows.Next()
			fail()
			for rows.Next() {
			}
			return rows.Err()
		},
		"Query/Close": func(ctx context.Context, s *dbctx.Scope, fail func()) error {
			rows, err := s.Query(ctx, big)
			if err != nil {
				return err
			}
			rows.Next()
			fail()
			rows.Close()
			return rows.Err()
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope, fail func()) error {
			b := &pgx.Batch{}
			b.Queue(big)
			br := s.SendBatch(ctx, b)
			rows, err := br.Query()
			if err != nil {
				br.Close()
				return err
			}
			rows.Next()
			fail()
			for rows.Next() {
			}
			err = rows.Err()
			if cerr := br.Close(); !errors.Is(cerr, dbctx.ErrSessionLost) {
				return fmt.Errorf("rows: %v; the batch's Close: %v, want ErrSessionLost too", err, cerr)
			}
			return err
		},
		"QueryContext": func(ctx context.Context, s *dbctx.Scope, fail func()) error {
			rows, err := s.QueryContext(ctx, big)
			if err != nil {
				return err
			}
			defer rows.Close()
			rows.Next()
			fail()
			for rows.Next() {
			}
			return rows.Err()
		},
		"QueryContext/Close": func(ctx context.Context, s *dbctx.Scope, fail func()) error {
			rows, err := s.QueryContext(ctx, big)
			if err != nil {
				return err
			}
			rows.Next()
			fail()
			return rows.Close()
		},
	}
	type tcase struct{ drv, mode, how, reader string }
	var cases []tcase
	for _, mode := range []string{"cache_statement", "exec"} {
		for _, how := range []string{"terminate", "cut"} {
			for _, rd := range []string{"Query", "Query/Close", "SendBatch", "QueryContext", "QueryContext/Close"} {
				cases = append(cases, tcase{pgxDriver, mode, how, rd})
			}
		}
	}
	for _, how := range []string{"terminate", "cut"} {
		for _, rd := range []string{"QueryContext", "QueryContext/Close"} {
			cases = append(cases, tcase{otherDriver, "", how, rd})
		}
	}
	for _, tc := range cases {
		t.Run(tc.drv+"/"+tc.mode+"/"+tc.how+"/"+tc.reader, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			opts := dbctx.Options{Logger: quiet()}
			var p *dbctx.Pool
			fail := func() { env.Terminate(t) }
			switch {
			case tc.drv == otherDriver:
				db := env.OpenWrapped(t)
				if tc.how == "cut" {
					px := newProxy(t, env)
					db = pgtest.OpenWrappedDSN(t, px.DSN())
					fail = func() { px.Cut(); px.Restore() }
				}
				db.SetMaxOpenConns(1)
				opts.MaxWorkers = 1
				p = poolOn(t, env, db, &opts)
			case tc.how == "cut":
				px := newProxy(t, env)
				p = poolInMode(t, env, px.DSN(), tc.mode, opts)
				fail = func() { px.Cut(); px.Restore() }
			default:
				p = onePoolInMode(t, env, tc.mode, opts)
			}
			ctx := context.Background()
			var before int
			var rowsErr error
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				var err error
				if before, err = backendPID(ctx, s); err != nil {
					return err
				}
				broken := p.Stats().Discarded.Broken
				rowsErr = readers[tc.reader](ctx, s, fail)
				if !errors.Is(rowsErr, dbctx.ErrSessionLost) {
					t.Errorf("the rows' error: %v (%T), want ErrSessionLost", rowsErr, rowsErr)
				}
				if n := p.Stats().Discarded.Broken; n != broken+1 {
					t.Errorf("connections discarded as broken once the rows failed: %d, want %d", n-broken, 1)
				}
				if _, err := backendPID(ctx, s); !errors.Is(err, dbctx.ErrSessionLost) {
					t.Errorf("the scope's next statement: %v, want ErrSessionLost", err)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			// What middleware.Answer's doc says of ErrSessionLost, an error
			// it does not list: the handler's to answer.
			rec := httptest.NewRecorder()
			if middleware.Answer(rec, httptest.NewRequest("GET", "/", nil), rowsErr) {
				t.Errorf("middleware.Answer answered ErrSessionLost with %d; want it left to the handler", rec.Code)
			}
			// The next unit of work runs on a fresh connection.
			err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				after, err := backendPID(ctx, s)
				if err == nil && after == before {
					t.Errorf("the next unit ran on backend %d, the one that failed", after)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A boundary that closes rows while another goroutine finds their
// connection failed neither deadlocks nor races: the rows' error is the
// session's loss, or their being cut, and the connection is discarded
// once.
func TestRowsSessionLostRacesEnd(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills the scope's own backend")
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, &dbctx.Options{Logger: quiet()})
		for range 5 {
			ctx, s := p.Scope(context.Background())
			if _, err := backendPID(ctx, s); err != nil {
				t.Fatal(err)
			}
			rows, err := s.QueryContext(ctx, "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g")
			if err != nil {
				t.Fatal(err)
			}
			rows.Next()
			env.Terminate(t)
			done := make(chan error, 1)
			go func() {
				for rows.Next() {
				}
				done <- errors.Join(rows.Err(), rows.Close())
			}()
			s.End()
			if err := <-done; err == nil {
				t.Error("rows read on after their backend was killed: no error")
			}
		}
		// The pool works on: a fresh connection.
		if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := backendPID(ctx, s)
			return err
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// In an Atomic, rows whose connection fails lose its transaction: their
// error and Atomic's are ErrSessionLost, and the next unit runs on a
// fresh connection.
func TestRowsSessionLostInAtomic(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills the scope's own backend")
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, &dbctx.Options{Logger: quiet()})
		var before int
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				var err error
				if before, err = backendPID(ctx, s); err != nil {
					return err
				}
				rows, err := s.QueryContext(ctx, "SELECT g, repeat('x', 100) FROM generate_series(1, 1000000) g")
				if err != nil {
					return err
				}
				defer rows.Close()
				rows.Next()
				env.Terminate(t)
				for rows.Next() {
				}
				if err := rows.Err(); !errors.Is(err, dbctx.ErrSessionLost) {
					t.Errorf("the rows' error: %v, want ErrSessionLost", err)
				}
				return nil
			})
			if !errors.Is(err, dbctx.ErrSessionLost) {
				t.Errorf("Atomic: %v, want ErrSessionLost", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			after, err := backendPID(ctx, s)
			if err == nil && after == before {
				t.Errorf("the next unit ran on backend %d, the one that failed", after)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// A QueryRowContext whose connection is cut while it reads (its backend
// blocked sending the rest of the result) loses the session as any
// statement does, on every driver: on another driver than pgx's the
// error is the network's (an unexpected EOF, no SQLSTATE), which the
// scope did not take for a failed connection: it returned the error
// alone and kept the dead connection for its next statement to find.
func TestQueryRowCutMidRead(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cuts the scope's own connection")
	forDrivers(t, func(t *testing.T, drv string) {
		env := newEnv(t)
		px := newProxy(t, env)
		var db *sql.DB
		if drv == otherDriver {
			db = pgtest.OpenWrappedDSN(t, px.DSN())
		} else {
			db = openDSN(t, px.DSN())
		}
		db.SetMaxOpenConns(1)
		p := poolOn(t, env, db, &dbctx.Options{Logger: quiet(), MaxWorkers: 1})
		var before int
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			var err error
			if before, err = backendPID(ctx, s); err != nil {
				return err
			}
			cut := make(chan error, 1)
			go func() {
				// Once the backend waits to send more than the socket
				// holds, cut the connection.
				cut <- dbtest.Wait(30*time.Second, func() bool {
					var n int
					err := env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'ClientWrite'", before).Scan(&n)
					return err == nil && n > 0
				})
				px.Cut()
			}()
			broken := p.Stats().Discarded.Broken
			var x int
			var y string
			err = s.QueryRowContext(ctx, "SELECT g, repeat('x', 1000) FROM generate_series(1, 10000000) g").Scan(&x, &y)
			if err := <-cut; err != nil {
				t.Fatalf("the backend never waited to send: %v", err)
			}
			if !errors.Is(err, dbctx.ErrSessionLost) {
				t.Errorf("QueryRowContext: %v, want ErrSessionLost", err)
			}
			if n := p.Stats().Discarded.Broken; n != broken+1 {
				t.Errorf("connections discarded as broken: %d, want 1", n-broken)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		px.Restore()
		err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			after, err := backendPID(ctx, s)
			if err == nil && after == before {
				t.Errorf("the next unit ran on backend %d, the one cut", after)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// truncatedBlob is an argument whose Value fails as decoding a truncated
// blob does: an error that wraps io.ErrUnexpectedEOF, nothing sent.
type truncatedBlob struct{}

func (truncatedBlob) Value() (driver.Value, error) {
	return nil, fmt.Errorf("decoding the blob: %w", io.ErrUnexpectedEOF)
}

// An error of the user's that wraps one the network gives (an argument's
// Value: io.ErrUnexpectedEOF) is not the connection's failure: the
// session, its backend and what the scope left in it, stay.
func TestArgErrorKeepsSession(t *testing.T) {
	t.Parallel()
	run := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"ExecContext": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT $1::text", truncatedBlob{})
			return err
		},
		"QueryContext": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.QueryContext(ctx, "SELECT $1::text", truncatedBlob{})
			if err != nil {
				return err
			}
			return rows.Close()
		},
		"QueryRowContext": func(ctx context.Context, s *dbctx.Scope) error {
			var x string
			return s.QueryRowContext(ctx, "SELECT $1::text", truncatedBlob{}).Scan(&x)
		},
	}
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, &dbctx.Options{Logger: quiet()})
		for name, f := range run {
			broken := p.Stats().Discarded.Broken
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				before, err := backendPID(ctx, s)
				if err != nil {
					return err
				}
				if _, err := s.ExecContext(ctx, "SELECT set_config('app.mark', 'kept', false)"); err != nil {
					return err
				}
				ferr := f(ctx, s)
				if !errors.Is(ferr, io.ErrUnexpectedEOF) || errors.Is(ferr, dbctx.ErrSessionLost) {
					t.Errorf("%s: %v, want the argument's error alone", name, ferr)
				}
				var after int
				var mark string
				if err := s.QueryRowContext(ctx, "SELECT pg_backend_pid(), current_setting('app.mark', true)").Scan(&after, &mark); err != nil {
					t.Errorf("%s: the next statement: %v", name, err)
				} else if after != before || mark != "kept" {
					t.Errorf("%s: the next statement on backend %d with app.mark %q, want %d and kept", name, after, mark, before)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n := p.Stats().Discarded.Broken; n != broken {
				t.Errorf("%s: connections discarded as broken: %d", name, n-broken)
			}
		}
	})
}
