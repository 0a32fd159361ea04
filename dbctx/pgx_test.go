package dbctx_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sqlcpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// A Scope is sqlc's DBTX for sql_package "pgx/v5".
var _ sqlcpgx.DBTX = (*dbctx.Scope)(nil)

// sqlc-shaped pgx code runs through the scope: every kind of query
// (:one, :many, :execrows, :copyfrom, :batchexec), pgx.ErrNoRows where no
// row is, and the scope counts the statements.
func TestPgxQueries(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	mustExec(t, env.Admin(), "SET search_path TO "+env.Schema()+"; "+sqlcpgx.Schema)
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		q := sqlcpgx.New(s)
		a, err := q.CreateItem(ctx, "a")
		if err != nil {
			return err
		}
		if n, err := q.CopyItems(ctx, []string{"b", "c", "d"}); err != nil || n != 3 {
			t.Fatalf("CopyItems = %d, %v; want 3", n, err)
		}
		if n, err := q.RenameItem(ctx, sqlcpgx.RenameItemParams{ID: a.ID, Name: "A"}); err != nil || n != 1 {
			t.Fatalf("RenameItem = %d, %v; want 1", n, err)
		}
		var batchErrs []error
		q.RenameItems(ctx, []sqlcpgx.RenameItemParams{{ID: a.ID + 1, Name: "B"}, {ID: a.ID + 2, Name: "C"}}).
			Exec(func(_ int, err error) { batchErrs = append(batchErrs, err) })
		if !slices.Equal(batchErrs, []error{nil, nil}) {
			t.Fatalf("batch: %v", batchErrs)
		}
		items, err := q.ListItems(ctx)
		if err != nil {
			return err
		}
		var names []string
		for _, it := range items {
			names = append(names, it.Name)
		}
		if !slices.Equal(names, []string{"A", "B", "C", "d"}) {
			t.Fatalf("items = %v", names)
		}
		if got, err := q.GetItem(ctx, a.ID); err != nil || got.Name != "A" {
			t.Fatalf("GetItem = %+v, %v", got, err)
		}
		if _, err := q.GetItem(ctx, -1); !errors.Is(err, pgx.ErrNoRows) {
			t.Fatalf("GetItem(-1): %v, want pgx.ErrNoRows", err)
		}
		if n, _ := s.Timing(); n < 7 {
			t.Errorf("Timing counted %d statements, want at least 7", n)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The pgx methods refuse an async context, as the database/sql ones do,
// and fail cleanly without a scope.
func TestPgxGuards(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	ctx, s := p.Scope(context.Background())
	defer s.End()
	actx := dbctx.Async(ctx)
	as := dbctx.From(actx)
	if _, err := as.Exec(actx, "SELECT 1"); !errors.Is(err, dbctx.ErrAsyncContext) {
		t.Errorf("Exec: %v, want ErrAsyncContext", err)
	}
	if _, err := as.Query(actx, "SELECT 1"); !errors.Is(err, dbctx.ErrAsyncContext) {
		t.Errorf("Query: %v, want ErrAsyncContext", err)
	}
	if err := as.QueryRow(actx, "SELECT 1").Scan(new(int)); !errors.Is(err, dbctx.ErrAsyncContext) {
		t.Errorf("QueryRow: %v, want ErrAsyncContext", err)
	}
	if err := as.SendBatch(actx, &pgx.Batch{}).Close(); !errors.Is(err, dbctx.ErrAsyncContext) {
		t.Errorf("SendBatch: %v, want ErrAsyncContext", err)
	}
	var none *dbctx.Scope
	if _, err := none.Exec(ctx, "SELECT 1"); !errors.Is(err, dbctx.ErrNoScope) {
		t.Errorf("nil scope: %v, want ErrNoScope", err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
		t.Fatalf("a refused statement took a slot or connection: %+v", st)
	}
}

// What a pgx statement leaves in the session (a SET, in a batch too) is
// reset before the connection serves the next scope: PostgreSQL, asked
// through the next scope on the same connection, shows the default.
func TestPgxSessionStateReset(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "needs consecutive scopes to share one server session")
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{})
	ctx := context.Background()
	for name, set := range map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"Exec": func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.Exec(ctx, "SET application_name = 'leaked'")
			return err
		},
		"Query": func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.Query(ctx, "SELECT set_config('application_name', 'leaked', false)")
			if err == nil {
				rows.Close()
			}
			return err
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			b.Queue("SET application_name = 'leaked'")
			return s.SendBatch(ctx, b).Close()
		},
	} {
		var before, after string
		var pid1, pid2 int
		err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			if err := s.QueryRow(ctx, "SELECT current_setting('application_name'), pg_backend_pid()").Scan(&before, &pid1); err != nil {
				return err
			}
			return set(ctx, s)
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return s.QueryRow(ctx, "SELECT current_setting('application_name'), pg_backend_pid()").Scan(&after, &pid2)
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if pid1 != pid2 {
			t.Fatalf("%s: not the same session (%d, %d): the test proves nothing", name, pid1, pid2)
		}
		if after != before {
			t.Errorf("%s: application_name = %q in the next scope, want %q", name, after, before)
		}
	}
}

// Rows and batch results left open are closed at the boundary, and the
// connection serves the next scope.
func TestPgxLeftOpen(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	p := onePool(t, env, dbctx.Options{})
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.Query(ctx, "SELECT g FROM generate_series(1, 100000) g")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		b := &pgx.Batch{}
		b.Queue("SELECT 1")
		b.Queue("SELECT 2")
		s.SendBatch(ctx, b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRow(ctx, "SELECT 42").Scan(&n)
	})
	if err != nil || n != 42 {
		t.Fatalf("next scope: %d, %v", n, err)
	}
	if st := p.Stats(); st.Discarded.Total() != 0 {
		t.Errorf("discarded: %+v", st.Discarded)
	}
}

// A pgx statement whose session the server ended before it could have an
// effect (outside a transaction, the first on its connection) runs again
// on a fresh connection; one that had rows delivered, or ran after other
// statements, does not.
func TestPgxRetry(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	ctx := context.Background()
	killed := dbtest.KillWhenActive(t, env, "SELECT 7 FROM pg_sleep")
	var n int
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRow(ctx, "SELECT 7 FROM pg_sleep(0.3)").Scan(&n)
	})
	if k := <-killed; k != 1 {
		t.Fatalf("killed %d backends, want 1", k)
	}
	if err != nil || n != 7 {
		t.Fatalf("QueryRow was not retried: %d, %v", n, err)
	}
	if st := p.Stats(); st.Retries != 1 {
		t.Errorf("retries = %d, want 1", st.Retries)
	}

	killed = dbtest.KillWhenActive(t, env, "SELECT pg_sleep")
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.Exec(ctx, "SELECT 1"); err != nil {
			return err
		}
		_, err := s.Exec(ctx, "SELECT pg_sleep(0.3)")
		return err
	})
	<-killed
	if !errors.Is(err, dbctx.ErrSessionLost) {
		t.Fatalf("second statement on a killed session: %v, want ErrSessionLost", err)
	}
	if st := p.Stats(); st.Retries != 1 {
		t.Errorf("retries = %d, want still 1", st.Retries)
	}
}

// Canceling the scope's context stops a pgx statement under way, and the
// connection is discarded, as with the database/sql methods.
func TestPgxCancel(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	ctx, cancel := context.WithCancel(context.Background())
	sctx, s := p.Scope(ctx)
	canceled := dbtest.WhenActive(t, env, "SELECT pg_sleep", cancel)
	_, err := s.Exec(sctx, "SELECT pg_sleep(30)")
	<-canceled
	s.End()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	eventually(t, "the statement to stop on the server", func() bool {
		return activeQueries(t, env, "SELECT pg_sleep") == 0
	})
	if st := p.Stats(); st.Discarded.Canceled != 1 {
		t.Errorf("canceled discards = %d, want 1", st.Discarded.Canceled)
	}
}

// Under TransactionPooling the pgx methods refuse what would leave state
// in a session, batches included.
func TestPgxTransactionPooling(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{TransactionPooling: true, Logger: quiet()})
	ctx := context.Background()
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		if _, err := s.Exec(ctx, "SET search_path TO public"); !errors.Is(err, dbctx.ErrSessionState) {
			t.Errorf("Exec SET: %v, want ErrSessionState", err)
		}
		b := &pgx.Batch{}
		b.Queue("SELECT 1")
		b.Queue("LISTEN x")
		if err := s.SendBatch(ctx, b).Close(); !errors.Is(err, dbctx.ErrSessionState) {
			t.Errorf("batch with LISTEN: %v, want ErrSessionState", err)
		}
		_, err := s.Exec(ctx, "SELECT 1")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

// Errors of the server reach the caller as pgx's own.
func TestPgxServerError(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.Query(ctx, "SELECT 1/0")
		return err
	})
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "22012" {
		t.Fatalf("got %v, want division_by_zero", err)
	}
}

// Canceling the context of an Atomic while a pgx statement of it runs:
// database/sql's watch rolls the transaction back on its own goroutine,
// which must not touch the connection while the statement does (the race
// detector would say so); the statement fails with the context's error
// and the pool holds nothing afterwards.
func TestPgxCancelInAtomic(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	ctx, cancel := context.WithCancel(context.Background())
	canceled := dbtest.WhenActive(t, env, "SELECT pg_sleep", cancel)
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.Exec(ctx, "SELECT 1"); err != nil {
				return err
			}
			_, err := s.Exec(ctx, "SELECT pg_sleep(30)")
			return err
		})
	})
	<-canceled
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("got %v, want context.Canceled", err)
	}
	eventually(t, "the statement to stop on the server", func() bool {
		return activeQueries(t, env, "SELECT pg_sleep") == 0
	})
}

// A batch whose connection fails under it loses the scope's session as
// any other statement does: its results, and every statement of the scope
// after it until the boundary, fail with ErrSessionLost. They reported
// the driver's error alone (57P01, then "conn closed" for the next batch,
// which went to the dead connection): the error surfaces from the
// batch's results, after SendBatch returned, and the scope never saw it.
func TestBatchSessionLost(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills the scope's own backend")
	batch := func(ctx context.Context, s *dbctx.Scope) (execErr, closeErr error) {
		b := &pgx.Batch{}
		b.Queue("SELECT 1")
		br := s.SendBatch(ctx, b)
		_, execErr = br.Exec()
		return execErr, br.Close()
	}
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		for _, tn := range []string{"", "t1", "in Atomic"} {
			t.Run(mode+"/"+tn, func(t *testing.T) {
				t.Parallel()
				env := newEnv(t)
				p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
				ctx := context.Background()
				if tn != "" {
					ctx = tenant.With(ctx, tn)
				}
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					if _, err := queryInt(ctx, s, "SELECT 1"); err != nil {
						return err
					}
					if tn == "in Atomic" {
						err := dbctx.Atomic(ctx, func(ctx context.Context) error {
							if _, err := queryInt(ctx, s, "SELECT 1"); err != nil {
								return err
							}
							env.Terminate(t)
							execErr, closeErr := batch(ctx, s)
							if !errors.Is(execErr, dbctx.ErrSessionLost) || !errors.Is(closeErr, dbctx.ErrSessionLost) {
								t.Errorf("in Atomic, the batch's Exec: %v; Close: %v; want ErrSessionLost", execErr, closeErr)
							}
							return nil
						})
						if !errors.Is(err, dbctx.ErrSessionLost) {
							t.Errorf("Atomic: %v, want ErrSessionLost", err)
						}
						return nil
					}
					env.Terminate(t)
					execErr, closeErr := batch(ctx, s)
					if !errors.Is(execErr, dbctx.ErrSessionLost) || !errors.Is(closeErr, dbctx.ErrSessionLost) {
						t.Errorf("the batch's Exec: %v; Close: %v; want ErrSessionLost", execErr, closeErr)
					}
					if execErr, _ := batch(ctx, s); !errors.Is(execErr, dbctx.ErrSessionLost) {
						t.Errorf("the next batch: %v, want ErrSessionLost", execErr)
					}
					if _, err := queryInt(ctx, s, "SELECT 1"); !errors.Is(err, dbctx.ErrSessionLost) {
						t.Errorf("the next statement: %v, want ErrSessionLost", err)
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				// The next unit runs, on a fresh connection.
				if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					_, err := queryInt(ctx, s, "SELECT 1")
					return err
				}); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// A batch or a COPY that is the first statement on a connection given
// back a moment before (pinned without the socket check, see Pool.check),
// whose backend was killed meanwhile, runs on another connection with the
// settings of its context, as a statement would: a backend killed while
// idle costs no failed statement. Both failed with the server's 57P01
// (and, in cache_statement mode, "statement outcome unknown ... may have
// committed", though nothing had run): they are never run again once
// sent, and were sent without a look at the connection.
func TestBatchFirstOnDeadConnection(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills the connection's own backend")
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		for _, what := range []string{"batch", "batch in Atomic", "CopyFrom", "CopyFrom in Atomic"} {
			t.Run(mode+"/"+what, func(t *testing.T) {
				t.Parallel()
				env := newEnv(t)
				rls(t, env)
				p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet()})
				p.SetRecent(time.Hour) // every check-out skips the socket check
				ctx := tenant.With(context.Background(), "t2")
				see(t, p, tenant.With(context.Background(), "t1"))
				env.Terminate(t)
				id := newID()
				var v seen
				err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					run := func(ctx context.Context) error {
						if strings.HasPrefix(what, "CopyFrom") {
							_, err := s.CopyFrom(ctx, pgx.Identifier{"copied"}, []string{"id", "name"}, pgx.CopyFromRows([][]any{{id, "copied"}}))
							return err
						}
						b := &pgx.Batch{}
						b.Queue(seenSQL)
						br := s.SendBatch(ctx, b)
						err := br.QueryRow().Scan(&v.tenant, &v.items)
						return errors.Join(err, br.Close())
					}
					if strings.HasSuffix(what, "in Atomic") {
						return dbctx.Atomic(ctx, run)
					}
					return run(ctx)
				})
				if err != nil {
					t.Fatalf("%s: %v", what, err)
				}
				if strings.HasPrefix(what, "CopyFrom") {
					v = inserted(t, env, id)
					v.items = 10
				}
				if v != (seen{"t2", 10}) {
					t.Errorf("%s saw %+v, want t2's", what, v)
				}
			})
		}
	}
}
