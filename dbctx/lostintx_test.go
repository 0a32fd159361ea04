package dbctx_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A Do nested in an Atomic whose function panics discards the connection,
// and the Atomic's transaction with it: fn, which took the PanicError and
// went on, gets ErrSessionLost for its next statements (not a fresh
// connection outside the transaction, autocommitting), and Atomic returns
// ErrSessionLost, its OnCommit functions unrun. PostgreSQL holds nothing
// of it. Both with Atomic inside a Do and with Atomic on a request's scope
// (middleware.Atomic's shape).
func TestPanicInDoInsideAtomic(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 2})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	for _, shape := range []string{"Atomic in Do", "Atomic on a request's scope"} {
		mustExec(t, env.Admin(), "TRUNCATE "+env.Schema()+".t")
		var inner, after, atomicErr error
		committed := false
		unit := func(ctx context.Context) error {
			atomicErr = dbctx.Atomic(ctx, func(ctx context.Context) error {
				s := dbctx.From(ctx)
				dbctx.OnCommit(ctx, func() { committed = true })
				if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
					return err
				}
				inner = dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error { panic("inner") })
				_, after = s.ExecContext(ctx, "INSERT INTO t VALUES (2)")
				return nil // the errors taken and dropped, as careless code does
			})
			return nil
		}
		if shape == "Atomic in Do" {
			if err := p.Do(context.Background(), func(ctx context.Context, _ *dbctx.Scope) error { return unit(ctx) }); err != nil {
				t.Fatal(err)
			}
		} else {
			ctx, s := p.Scope(context.Background())
			unit(ctx)
			s.End()
		}
		var pe *dbctx.PanicError
		if !errors.As(inner, &pe) {
			t.Errorf("%s: the nested Do: %v, want a PanicError", shape, inner)
		}
		if !errors.Is(after, dbctx.ErrSessionLost) {
			t.Errorf("%s: a statement of the Atomic after the panic: %v, want ErrSessionLost", shape, after)
		}
		if !errors.Is(atomicErr, dbctx.ErrSessionLost) || committed {
			t.Errorf("%s: Atomic returned %v, OnCommit ran %v; want ErrSessionLost, not run", shape, atomicErr, committed)
		}
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 0 {
			t.Errorf("%s: PostgreSQL holds %d rows (%v), want 0", shape, n, err)
		}
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 || st.Discarded.Panic != 2 {
		t.Errorf("stats %+v: want nothing held, 2 discarded for panics", st)
	}
}

// A session that ends inside an Atomic (its backend terminated) is
// ErrSessionLost for the Atomic's next statement, for Atomic itself and
// for the scope's statements after it until its boundary; the next unit
// of work runs.
func TestSessionLostInAtomic(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "terminates the backend of a transaction; behind a pooler the pooler absorbs the kill")
	forDrivers(t, func(t *testing.T, drv string) {
		p, env := newPoolWith(t, drv, &dbctx.Options{MaxWorkers: 1})
		mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
		var inAtomic, atomicErr, afterAtomic error
		err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			atomicErr = dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
					return err
				}
				if n := env.Terminate(t); n != 1 {
					t.Fatalf("killed %d backends, want 1", n)
				}
				_, inAtomic = s.ExecContext(ctx, "INSERT INTO t VALUES (2)")
				return nil
			})
			_, afterAtomic = s.ExecContext(ctx, "SELECT 1")
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		for what, err := range map[string]error{"the statement after the kill": inAtomic, "Atomic": atomicErr, "a statement after Atomic": afterAtomic} {
			if !errors.Is(err, dbctx.ErrSessionLost) {
				t.Errorf("%s: %v, want ErrSessionLost", what, err)
			}
		}
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 0 {
			t.Errorf("PostgreSQL holds %d rows (%v), want 0", n, err)
		}
		if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			return err
		}); err != nil {
			t.Errorf("the next unit of work: %v", err)
		}
	})
}

// A COMMIT its context cancels mid-way (a deferred trigger runs in it) is
// canceled by the server (a cancel request; the connection stays), and
// nothing commits: no connection is discarded, none counted broken (the
// rollback after a cut connection counted it so).
func TestCommitCanceledCounted(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels a COMMIT mid-flight; PgBouncer 1.18 crashes on the cancel request")
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	sc := env.Schema()
	mustExec(t, env.Admin(), "CREATE TABLE "+sc+".t (n int); "+
		"CREATE FUNCTION "+sc+".slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$; "+
		"CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON "+sc+".t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "+sc+".slow()")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		dbtest.Wait(time.Minute, func() bool {
			var n int
			env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' AND query ILIKE 'commit%'", env.Role()).Scan(&n)
			return n > 0
		})
		cancel()
	}()
	committed := false
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.OnCommit(ctx, func() { committed = true })
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
	})
	if !errors.Is(err, context.Canceled) || committed {
		t.Errorf("Atomic: %v, OnCommit ran %v; want context.Canceled, not run", err, committed)
	}
	var n int
	if err := env.Admin().QueryRow("SELECT count(*) FROM " + sc + ".t").Scan(&n); err != nil || n != 0 {
		t.Errorf("PostgreSQL holds %d rows (%v), want 0", n, err)
	}
	if d := p.Stats().Discarded; d != (dbctx.Discards{}) {
		t.Errorf("discarded %+v, want none", d)
	}
}

// Where the context ends after PostgreSQL committed but before its answer
// to COMMIT is read (held back on the way: a stalled proxy stands for the
// network), Atomic reports the commit PostgreSQL made and runs OnCommit:
// it reported the work lost (and a 500 went out for it). The end of the
// context sends a cancel request instead of cutting the connection under
// the COMMIT, and the answer is read.
func TestCommitAnswerAfterContextEnded(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "stalls its own proxy to the server")
	env := newEnv(t)
	px := newProxy(t, env)
	db := openDSN(t, px.DSN())
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1})
	sc := env.Schema()
	mustExec(t, env.Admin(), "CREATE TABLE "+sc+".t (n int); "+
		"CREATE FUNCTION "+sc+".slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$; "+
		"CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON "+sc+".t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "+sc+".slow()")
	count := func() int {
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + sc + ".t").Scan(&n); err != nil {
			t.Error(err)
		}
		return n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		defer px.Restore()
		if dbtest.Wait(time.Minute, func() bool {
			var n int
			env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' AND query ILIKE 'commit%'", env.Role()).Scan(&n)
			return n > 0
		}) != nil {
			return
		}
		px.Stall() // the answer to COMMIT is held back
		if dbtest.Wait(time.Minute, func() bool { return count() == 1 }) != nil {
			return
		}
		conns := px.Conns()
		cancel()
		dbtest.Wait(time.Minute, func() bool { return px.Conns() > conns }) // the cancel request's
	}()
	committed := false
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.OnCommit(ctx, func() { committed = true })
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
	})
	if n := count(); n != 1 || err != nil || !committed {
		t.Errorf("PostgreSQL holds %d rows; Atomic returned %v, OnCommit ran %v; want 1 row, nil, true", n, err, committed)
	}
}

// The same on another driver than pgx's, which cannot send a cancel
// request: it said ctx's error ("dbctx: commit: context canceled"),
// OnCommit unrun, for the commit PostgreSQL had made. The COMMIT is read
// to its answer, up to five seconds (cleanupTimeout) past the context's
// end; the network comes back once Do has returned, or a second after
// the cancel, well within that.
func TestCommitAnswerAfterContextEndedOtherDriver(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "stalls its own proxy to the server")
	env := newEnv(t)
	px := newProxy(t, env)
	p := poolOn(t, env, pgtest.OpenWrappedDSN(t, px.DSN()), &dbctx.Options{MaxWorkers: 1})
	sc := env.Schema()
	mustExec(t, env.Admin(), "CREATE TABLE "+sc+".t (n int); "+
		"CREATE FUNCTION "+sc+".slow() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$; "+
		"CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON "+sc+".t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "+sc+".slow()")
	count := func() int {
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + sc + ".t").Scan(&n); err != nil {
			t.Error(err)
		}
		return n
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	returned := make(chan struct{})
	go func() {
		defer px.Restore()
		if dbtest.Wait(time.Minute, func() bool {
			var n int
			env.Admin().QueryRow("SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state = 'active' AND query ILIKE 'commit%'", env.Role()).Scan(&n)
			return n > 0
		}) != nil {
			return
		}
		px.Stall() // the answer to COMMIT is held back
		if dbtest.Wait(time.Minute, func() bool { return count() == 1 }) != nil {
			return
		}
		cancel()
		select {
		case <-returned:
		case <-time.After(time.Second):
		}
	}()
	committed := false
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			dbctx.OnCommit(ctx, func() { committed = true })
			_, err := s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
			return err
		})
	})
	close(returned)
	if n := count(); n != 1 || err != nil || !committed {
		t.Errorf("PostgreSQL holds %d rows; Atomic returned %v, OnCommit ran %v; want 1 row, nil, true", n, err, committed)
	}
}

// A handed-out connection whose backend was terminated is discarded at
// the boundary with no claim of "a result was left open" (none was): the
// warning is for rows of the raw connection never closed, which it still
// reports.
func TestNoLeftOpenWarningForDeadConn(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "terminates the backend of a handed-out connection")
	logs, logger := dbtest.NewLogs()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1, Logger: logger})
	ctx, s := p.Scope(context.Background())
	conn, err := s.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := env.Terminate(t); n != 1 {
		t.Fatalf("killed %d backends, want 1", n)
	}
	if _, err := conn.ExecContext(ctx, "SELECT 1"); err == nil {
		t.Fatal("a statement on the terminated backend: nil error")
	}
	s.End()
	if n := logs.Count(slog.LevelWarn, "dbctx: a result was left open"); n != 0 {
		t.Errorf("warned %d times of a result left open, none was: %s", n, logs)
	}
	// Rows left open on the raw connection: still said.
	ctx, s = p.Scope(context.Background())
	conn, err = s.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := conn.QueryContext(ctx, "SELECT generate_series(1, 100000)")
	if err != nil {
		t.Fatal(err)
	}
	s.End()
	rows.Close() // database/sql's bookkeeping of the discarded connection waits for it
	if n := logs.Count(slog.LevelWarn, "dbctx: a result was left open"); n != 1 {
		t.Errorf("rows left open: warned %d times, want 1: %s", n, logs)
	}
}
