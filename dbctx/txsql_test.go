package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Transaction control written in SQL (BEGIN … COMMIT, ROLLBACK, END,
// ABORT, AND CHAIN) leaves every statement after it with its context's
// settings: PostgreSQL, asked by each statement, says which tenant it
// ran with, on a connection whose session carries another tenant's.
func TestSettingsAfterTxControlInSQL(t *testing.T) {
	t.Parallel()
	for name, stmts := range map[string][]string{
		"commit":     {"BEGIN", "COMMIT"},
		"rollback":   {"BEGIN", "ROLLBACK"},
		"end":        {"START TRANSACTION", "END"},
		"abort":      {"BEGIN", "ABORT"},
		"chain":      {"BEGIN", "COMMIT AND CHAIN", "COMMIT"},
		"one string": {"BEGIN; SELECT 1; COMMIT"},
		"open":       {"BEGIN"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			forDrivers(t, func(t *testing.T, drv string) {
				if pgtest.Pooled() && (drv == otherDriver || len(stmts) == 1) {
					// Settings outside a transaction ride in pgx's pipeline
					// with one statement; anything else is refused there.
					t.Skip("behind PgBouncer: refused with ErrSessionState (TestSettingsBehindPgBouncer)")
				}
				env := pgtest.New(t)
				db := openWith(t, env, drv)
				db.SetMaxOpenConns(1)
				p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, TransactionPooling: pgtest.Pooled()})
				const ask = "SELECT coalesce(current_setting('app.tenant', true), '')"
				ctx := context.Background()
				err := p.Do(tenant.With(ctx, "t3"), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, ask)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				err = p.Do(tenant.With(ctx, "t1"), func(ctx context.Context, s *dbctx.Scope) error {
					for i, q := range stmts {
						if _, err := s.ExecContext(ctx, q); err != nil {
							return err
						}
						for j := range 3 {
							var got string
							if err := s.QueryRowContext(ctx, ask).Scan(&got); err != nil {
								return err
							}
							if got != "t1" {
								return fmt.Errorf("statement %d after %q ran with tenant %q, want t1", j, stmts[:i+1], got)
							}
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// Inside Atomic, SQL that would end its transaction or begin another is
// refused before it is sent: the statements after it would otherwise run
// outside the transaction Atomic commits or rolls back. PostgreSQL says
// the transaction stayed whole: its write is gone with its rollback.
// Savepoints in SQL are not transaction control of that kind.
func TestTxControlInAtomic(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	db := env.Open(t)
	if _, err := db.Exec("CREATE TABLE marks (n int)"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, q := range []string{
		"COMMIT", "commit work", "END", "ROLLBACK", "ROLLBACK AND CHAIN", "ABORT", "BEGIN", "START TRANSACTION",
		"PREPARE TRANSACTION 'dbscope_x'", "SELECT 1; COMMIT", "/* c */ COMMIT", "batch",
		// The words begin atomic outside a routine's body; a COMMIT
		// outside a string once standard_conforming_strings is off.
		"CREATE TEMP TABLE made AS SELECT begin atomic FROM (SELECT 1 AS begin) s; COMMIT", "escapes",
		"CREATE PROCEDURE pg_temp.zp() LANGUAGE sql BEGIN ATOMIC END; COMMIT",
	} {
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO marks VALUES ($1)", i); err != nil {
					return err
				}
				var err error
				if q == "escapes" {
					if _, err := s.ExecContext(ctx, "SET LOCAL standard_conforming_strings = off"); err != nil {
						return err
					}
					q = `SELECT 'a\''; COMMIT; SELECT 1`
				}
				if q == "batch" {
					b := &pgx.Batch{}
					b.Queue("SELECT 1")
					b.Queue("COMMIT")
					err = s.SendBatch(ctx, b).Close()
				} else {
					_, err = s.ExecContext(ctx, q)
				}
				if !errors.Is(err, dbctx.ErrInAtomic) {
					return fmt.Errorf("%q inside Atomic: %v, want ErrInAtomic", q, err)
				}
				return err
			})
		})
		if !errors.Is(err, dbctx.ErrInAtomic) {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRow("SELECT count(*) FROM marks WHERE n = $1", i).Scan(&n); err != nil || n != 0 {
			t.Errorf("after %q was refused and Atomic rolled back: %d rows (%v), want none", q, n, err)
		}
	}
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			for _, q := range []string{"SAVEPOINT a", "INSERT INTO marks VALUES (100)", "ROLLBACK TO SAVEPOINT a", "ROLLBACK TO a", "RELEASE a", "INSERT INTO marks VALUES (101)"} {
				if _, err := s.ExecContext(ctx, q); err != nil {
					return fmt.Errorf("%s: %w", q, err)
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	var got string
	if err := db.QueryRow("SELECT string_agg(n::text, ',') FROM marks").Scan(&got); err != nil || got != "101" {
		t.Errorf("savepoints inside Atomic: rows %q (%v), want 101", got, err)
	}
}

// A statement whose error is the client's (a Scan into the wrong type,
// pgx's CollectRows), after the server ran it and the settings before it,
// leaves the settings dbscope knows the session carries right: the next
// unit of work, of another tenant, runs with its own.
func TestClientErrorKeepsSettingsKnown(t *testing.T) {
	t.Parallel()
	fails := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"pgx Scan": func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			return s.QueryRow(ctx, "SELECT 'x'::text").Scan(&n)
		},
		"CollectRows": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.Query(ctx, "SELECT g::text FROM generate_series(1, 3) g")
			if err != nil {
				return err
			}
			_, err = pgx.CollectRows(rows, pgx.RowTo[int32])
			return err
		},
		"NULL into string": func(ctx context.Context, s *dbctx.Scope) error {
			var v string
			return s.QueryRow(ctx, "SELECT NULL::text").Scan(&v)
		},
		"batch Scan": func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue("SELECT 'x'::text")
			br := s.SendBatch(ctx, b)
			var n int
			err := br.QueryRow().Scan(&n)
			return errors.Join(err, br.Close())
		},
		"database/sql Scan": func(ctx context.Context, s *dbctx.Scope) error {
			var n int
			return s.QueryRowContext(ctx, "SELECT 'x'::text").Scan(&n)
		},
	}
	for _, mode := range allModes {
		for name, fail := range fails {
			t.Run(mode+"/"+name, func(t *testing.T) {
				t.Parallel()
				if mode == "cache_statement" {
					pgtest.SkipPooled(t, "cache_statement needs one server session")
				}
				env := pgtest.New(t)
				p := onePoolInMode(t, env, mode, dbctx.Options{TransactionPooling: pgtest.Pooled()})
				const ask = "SELECT coalesce(current_setting('app.tenant', true), '')"
				ctx := context.Background()
				for _, tn := range []string{"t3", "t1", "t3"} {
					err := p.Do(tenant.With(ctx, tn), func(ctx context.Context, s *dbctx.Scope) error {
						var got string
						if err := s.QueryRowContext(ctx, ask).Scan(&got); err != nil {
							return err
						}
						if got != tn {
							return fmt.Errorf("ran with tenant %q, want %q", got, tn)
						}
						if tn == "t1" {
							if err := fail(ctx, s); err == nil {
								return errors.New("the failing statement did not fail")
							}
						}
						return nil
					})
					if err != nil {
						t.Fatalf("unit of %s: %v", tn, err)
					}
				}
			})
		}
	}
}

// txControlOf's reading of transaction control, as PostgreSQL's grammar
// has it.
func TestTxControlOf(t *testing.T) {
	for q, want := range map[string]string{
		"BEGIN":                              "open",
		"begin isolation level serializable": "open",
		"START TRANSACTION READ ONLY":        "open",
		"COMMIT":                             "closed",
		"COMMIT WORK AND NO CHAIN":           "closed",
		"COMMIT AND CHAIN":                   "open",
		"end transaction":                    "closed",
		"ROLLBACK":                           "closed",
		"ROLLBACK AND CHAIN":                 "open",
		"ABORT WORK":                         "closed",
		"ROLLBACK TO a":                      "none",
		"ROLLBACK TO SAVEPOINT a":            "none",
		"ROLLBACK WORK TO SAVEPOINT a":       "none",
		"ROLLBACK TRANSACTION TO a":          "none",
		"COMMIT PREPARED 'x'":                "none",
		"ROLLBACK PREPARED 'x'":              "none",
		"PREPARE TRANSACTION 'x'":            "closed",
		"PREPARE transaction AS SELECT 1":    "none",
		"SAVEPOINT a":                        "none",
		"RELEASE a":                          "none",
		"SELECT 1; COMMIT":                   "closed",
		"BEGIN; SELECT 1; COMMIT":            "closed",
		"COMMIT; BEGIN":                      "open",
		"/* x */ commit -- y":                "closed",
		"SELECT 'COMMIT'":                    "none",
		"CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; END":        "none",
		"SELECT x.begin atomic FROM (SELECT 1 AS begin) x; COMMIT":          "closed",
		"CREATE PROCEDURE p() BEGIN ATOMIC SELECT 1; SELECT 2; END; COMMIT": "closed",
		"START something": "none",
		// Not a routine's body: the words begin atomic elsewhere.
		"CREATE TABLE made AS SELECT begin atomic FROM (SELECT 1 AS begin) s; COMMIT":                                  "closed",
		"CREATE VIEW v AS SELECT begin atomic FROM (SELECT 1 AS begin) s; COMMIT":                                      "closed",
		"CREATE FUNCTION f(begin int) RETURNS int LANGUAGE sql RETURN (SELECT begin atomic FROM (SELECT 1) x); COMMIT": "closed",
		"CREATE OR REPLACE PROCEDURE s.p() LANGUAGE sql BEGIN ATOMIC SELECT 1; END; BEGIN":                             "open",
		"CREATE FUNCTION s.f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END; COMMIT":    "closed",
		"CREATE OR REPLACE PROCEDURE p() LANGUAGE sql BEGIN ATOMIC END; COMMIT":                                        "closed",
		"create procedure p() language sql begin atomic\nend\n; begin":                                                 "open",
		// Read with standard_conforming_strings off too (set earlier in
		// the transaction), where the COMMIT is no string's.
		`SELECT 'a\''; COMMIT; SELECT 1`: "closed",
	} {
		if got := dbctx.TxControlOf(q); got != want {
			t.Errorf("txControlOf(%q) = %s, want %s", q, got, want)
		}
	}
}

// An Atomic whose function went on after a statement failed, and returned
// nil, reports the rollback PostgreSQL answered its COMMIT with, on
// either driver (another driver's COMMIT says nothing of it): PostgreSQL
// has no row, and Atomic's error says so.
func TestAtomicReportsRollback(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, nil)
		db := env.Open(t)
		if _, err := db.Exec("CREATE TABLE marks (n int)"); err != nil {
			t.Fatal(err)
		}
		var aerr error
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			aerr = dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO marks VALUES (1)"); err != nil {
					return err
				}
				s.ExecContext(ctx, "SELECT 1 / 0") // failed, and ignored
				return nil
			})
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := db.QueryRow("SELECT count(*) FROM marks").Scan(&n); err != nil || n != 0 {
			t.Fatalf("%d rows (%v), want none", n, err)
		}
		if aerr == nil {
			t.Fatal("Atomic returned nil for a transaction PostgreSQL rolled back")
		}
	})
}

// An Atomic that cannot go on, on either driver: a declared setting the
// server refuses (after BEGIN ran), or a context that ended before the
// commit: it rolls back and says why, and the scope's next statement runs,
// not in an aborted transaction.
func TestAtomicFailsCleanly(t *testing.T) {
	t.Parallel()
	timeout := dbctx.NewSetting("statement_timeout")
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, nil)
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			err := dbctx.Atomic(timeout.With(ctx, "bogus"), func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			})
			if err == nil {
				return errors.New("Atomic with a setting the server refuses: nil")
			}
			cctx, cancel := context.WithCancel(ctx)
			err = dbctx.Atomic(cctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
					return err
				}
				cancel()
				return nil
			})
			if !errors.Is(err, context.Canceled) {
				return fmt.Errorf("Atomic whose context ended before its commit: %v, want context.Canceled", err)
			}
			// Not 25P02 (a transaction left open, aborted): and the
			// pool's check at the test's end finds nothing of ours idle
			// in a transaction.
			var one int
			if err := s.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
				return fmt.Errorf("the next statement: %w", err)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// endsBefore: a statement that ends a transaction (or rolls back to a
// savepoint) before another of the same text, or of a later query of the
// batch; a function body's END is the CREATE's.
func TestEndsBefore(t *testing.T) {
	for _, tc := range []struct {
		q          string
		last, want bool
	}{
		{"SELECT 1", false, false},
		{"COMMIT", true, false},
		{"COMMIT", false, true},
		{"COMMIT; SELECT 1", true, true},
		{"SELECT 1; COMMIT", true, false},
		{"ROLLBACK TO a; SELECT 1", true, true},
		{"prepare transaction 'x'; SELECT 1", true, true},
		{"PREPARE transaction AS SELECT 1; EXECUTE transaction", true, false},
		{"SELECT 'COMMIT; x'", false, false},
		{"COMMIT;;", true, false},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; SELECT f()", true, false},
		{"CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END; COMMIT; SELECT 1", true, true},
		{"end; select 1", true, true},
		{"CREATE TABLE made AS SELECT begin atomic FROM (SELECT 1 AS begin) s; COMMIT; SELECT 1", true, true},
		{`SELECT 'a\''; COMMIT; SELECT 1`, true, true},
		{`SELECT E'a\''; SELECT 1`, true, false},
	} {
		if got := dbctx.EndsBefore(tc.q, tc.last); got != tc.want {
			t.Errorf("endsBefore(%q, %v) = %v, want %v", tc.q, tc.last, got, tc.want)
		}
	}
}

// Once a transaction other than Atomic's ends — BeginTx's *sql.Tx
// committed, rolled back, or rolled back by the scope when its context
// ended; one begun in SQL and ended by an Atomic inside it — every
// statement of the scope runs with its context's settings again:
// PostgreSQL, asked by each statement, says which tenant it ran as. On
// another driver the scope took the transaction for still open, and sent
// the settings transaction-locally in a round trip of their own, gone
// before the statement ran: it ran with none, or with the tenant the
// session carried from an earlier statement.
func TestSettingsAfterTxEnds(t *testing.T) {
	t.Parallel()
	const ask = "SELECT coalesce(current_setting('app.tenant', true), ''), pg_current_xact_id_if_assigned() IS NULL"
	ends := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"commit": func(ctx context.Context, s *dbctx.Scope) error {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			return tx.Commit()
		},
		"rollback": func(ctx context.Context, s *dbctx.Scope) error {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			return tx.Rollback()
		},
		"context ends": func(ctx context.Context, s *dbctx.Scope) error {
			tctx, cancel := context.WithCancel(ctx)
			tx, err := s.BeginTx(tctx, nil)
			if err != nil {
				cancel()
				return err
			}
			// An xid, for the statements after to tell whether they
			// still run in the transaction.
			if _, err := tx.ExecContext(tctx, "SELECT pg_current_xact_id()"); err != nil {
				cancel()
				return err
			}
			cancel()
			return nil
		},
		"SQL BEGIN, Atomic commits": func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "BEGIN"); err != nil {
				return err
			}
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, "SELECT pg_current_xact_id()")
				return err
			})
		},
		"SQL BEGIN, Atomic fails": func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "BEGIN"); err != nil {
				return err
			}
			dbctx.Atomic(ctx, func(ctx context.Context) error {
				s.ExecContext(ctx, "SELECT pg_current_xact_id()")
				return errors.New("fails")
			})
			return nil
		},
	}
	for name, end := range ends {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			forDrivers(t, func(t *testing.T, drv string) {
				if pgtest.Pooled() && drv == otherDriver {
					t.Skip("behind PgBouncer: refused with ErrSessionState (TestSettingsBehindPgBouncer)")
				}
				env := pgtest.New(t)
				db := openWith(t, env, drv)
				db.SetMaxOpenConns(1)
				p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, TransactionPooling: pgtest.Pooled()})
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					t1, t2 := tenant.With(ctx, "t1"), tenant.With(ctx, "t2")
					// The session carries t2 at session level.
					if _, err := s.ExecContext(t2, "SELECT 1"); err != nil {
						return err
					}
					if err := end(t1, s); err != nil {
						return err
					}
					// Until a transaction the context ended is rolled
					// back, statements run in it: with their settings too.
					for out, i := false, 0; !out || i < 4; i++ {
						tctx, want := t1, "t1"
						if i%2 == 1 {
							tctx, want = t2, "t2"
						}
						var got string
						if err := s.QueryRowContext(tctx, ask).Scan(&got, &out); err != nil {
							return err
						}
						if got != want {
							return fmt.Errorf("statement %d after the transaction ended ran with tenant %q, want %s", i, got, want)
						}
						if i > 10000 {
							return errors.New("the transaction is still open after 10000 statements")
						}
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// A *sql.Tx of BeginTx whose transaction SQL run in it ended (COMMIT,
// ROLLBACK through the *sql.Tx), which database/sql takes for open still:
// every statement of the scope, of two tenants in turn, runs with its own,
// before and after the *sql.Tx's own end. On another driver, where the
// scope cannot read the server's transaction status, it sent the settings
// transaction-locally, in a round trip of their own, outside any
// transaction: they were gone before the statement ran.
func TestSettingsAfterTxEndedInSQL(t *testing.T) {
	t.Parallel()
	const ask = "SELECT coalesce(current_setting('app.tenant', true), '')"
	for _, end := range []string{"COMMIT", "ROLLBACK"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			forDrivers(t, func(t *testing.T, drv string) {
				if pgtest.Pooled() {
					t.Skip("behind PgBouncer: a transaction ended in SQL under a *sql.Tx goes to any server connection")
				}
				env := pgtest.New(t)
				db := openWith(t, env, drv)
				db.SetMaxOpenConns(1)
				p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
				err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					t1, t2 := tenant.With(ctx, "t1"), tenant.With(ctx, "t2")
					tx, err := s.BeginTx(t1, nil)
					if err != nil {
						return err
					}
					defer tx.Rollback()
					if _, err := tx.ExecContext(ctx, end); err != nil {
						return err
					}
					check := func(when string) error {
						for i := range 4 {
							tctx, want := t1, "t1"
							if i%2 == 1 {
								tctx, want = t2, "t2"
							}
							var got string
							if err := s.QueryRowContext(tctx, ask).Scan(&got); err != nil {
								return err
							}
							if got != want {
								return fmt.Errorf("statement %d %s ran with tenant %q, want %s", i, when, got, want)
							}
						}
						return nil
					}
					if err := check("after " + end + " in the *sql.Tx"); err != nil {
						return err
					}
					tx.Rollback()
					return check("after the *sql.Tx's Rollback")
				})
				if err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}

// A BeginTx that begins no transaction (its context ended already)
// leaves the scope outside any: the statements after it run with their own context's
// tenant, on both drivers. On another driver the scope took the failed
// BEGIN for a transaction begun in SQL, still open: it applied each
// statement's settings for that transaction alone, and the server, in
// none, dropped them with the set_config's own round trip, so the
// statement ran with the tenant applied before it, another unit's.
func TestBeginTxFailedBeginsNothing(t *testing.T) {
	t.Parallel()
	failed := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"context ended": func(ctx context.Context, s *dbctx.Scope) error {
			cctx, cancel := context.WithCancel(ctx)
			cancel()
			_, err := s.BeginTx(cctx, nil)
			return err
		},
	}
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1})
		for name, fail := range failed {
			ctx, scope := p.Scope(context.Background())
			var got string
			if err := scope.QueryRowContext(tenant.With(ctx, "a"), "SELECT current_setting('app.tenant', true)").Scan(&got); err != nil || got != "a" {
				t.Fatalf("%s: the first statement: %q, %v", name, got, err)
			}
			if err := fail(ctx, scope); err == nil {
				t.Fatalf("%s: BeginTx succeeded", name)
			}
			for _, tn := range []string{"b", "c"} {
				err := scope.QueryRowContext(tenant.With(ctx, tn), "SELECT current_setting('app.tenant', true)").Scan(&got)
				if err != nil {
					t.Fatalf("%s: a statement after: %v", name, err)
				}
				if got != tn {
					t.Errorf("%s: a statement after the failed BeginTx ran with app.tenant %q, its context declares %q", name, got, tn)
				}
			}
			scope.End()
		}
	})
}

// A statement of the scope whose context ends mid-way while a *sql.Tx of
// BeginTx is open (the statement runs in it) fails with its context's
// error and hangs nothing: the Tx's Rollback and the scope's end return,
// and the next unit gets a working connection. On another driver the
// scope asked database/sql whether the connection still worked
// (PingContext); the driver, whose connection the ended context had
// closed, said it was bad, and database/sql's close of the *sql.Conn
// waited for the *sql.Tx to end, whose end waited for the scope: the
// unit hung for good, with the scope's lock held.
func TestStatementEndsInBeginTx(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
		noHang(t, "a statement cut in BeginTx's transaction", func() {
			ctx, scope := p.Scope(context.Background())
			defer scope.End()
			tx, err := scope.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			sctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			defer cancel()
			_, err = scope.ExecContext(sctx, "SELECT pg_sleep(30)")
			if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, dbctx.ErrSessionLost) {
				t.Errorf("the statement cut short: %v", err)
			}
			tx.Rollback()
			scope.End()
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := queryInt(ctx, s, "SELECT 1")
				return err
			}); err != nil {
				t.Errorf("the next unit: %v", err)
			}
		})
	})
}

// scopeStatement is the statement of TestStatementContextEndsUnsent: the
// name marks its goroutine.
func scopeStatement(ctx context.Context, s *dbctx.Scope) error {
	_, err := queryInt(ctx, s, "SELECT 1")
	return err
}

// A statement of the scope whose context ends before it is sent (here
// while it waits for the connection, held by the *sql.Conn that
// Scope.Conn handed out) fails with its context's error, on both
// drivers. On another driver it failed with "driver: bad connection":
// pgx's stdlib reports a statement that finds its context done so, and
// the scope returned that, which errors.Is read as no context error.
func TestStatementContextEndsUnsent(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, drv string) {
		p, _ := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
		noHang(t, "a statement whose context ends unsent", func() {
			ctx, scope := p.Scope(context.Background())
			defer scope.End()
			conn, err := scope.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			held, release, rawDone := make(chan struct{}), make(chan struct{}), make(chan struct{})
			go func() {
				defer close(rawDone)
				conn.Raw(func(any) error { close(held); <-release; return nil })
			}()
			<-held
			sctx, cancel := context.WithCancel(ctx)
			errc := make(chan error, 1)
			go func() { errc <- scopeStatement(sctx, scope) }()
			eventually(t, "the statement waiting for the connection", func() bool {
				return parkedIn("dbctx_test.scopeStatement", "sync.(*Mutex).Lock")
			})
			cancel()
			close(release)
			<-rawDone
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Errorf("a statement whose context ended before it was sent: %v, want context.Canceled", err)
			}
		})
	})
}
