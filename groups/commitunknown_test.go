package groups_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// Over PostgreSQL, a Send inside an Atomic of another pool (published at
// its commit) whose commit's outcome is unknown (ErrCommitUnknown,
// PostgreSQL having committed): the message does not go out, and the
// group's members get a gap in its place, before what is sent after.
func TestSendCommitUnknownOtherPool(t *testing.T) {
	pgtest.SkipPooled(t, "cuts its own connections to the server, and asks PostgreSQL itself when a COMMIT has settled")
	env := pgtest.New(t)
	ctx := context.Background()
	in := pgInstances(t, env, 1, nil)[0]
	recs := members(t, []*instance{in}, 1, nil, "o")
	px, other, rowsN := otherPool(t, env)
	done := make(chan error, 1)
	go func() {
		done <- other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO work VALUES (1)"); err != nil {
					return err
				}
				if err := in.layer.Send(ctx, "o", []byte(strings.Repeat("L", 20000))); err != nil {
					return err
				}
				px.Mute()
				return nil
			})
		})
	}()
	dbtest.Eventually(t, "the row committed", func() bool { return rowsN() == 1 })
	px.Cut()
	px.Restore() // the database can be asked again
	err := <-done
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("want ErrCommitUnknown, got %v", err)
	}
	if err := in.layer.Send(ctx, "o", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "marker", func() bool { return strings.HasSuffix(events(recs[0]), "marker") })
	if got := events(recs[0]); got != "gap,marker" {
		t.Fatalf("committed (row present), the message's commit unknown: member got %q, want a gap, then the marker", got)
	}
	if n := in.layer.Stats().Gaps; n != 1 {
		t.Errorf("Stats.Gaps = %d, want 1", n)
	}
}

// A COMMIT still running on the server (a deferred constraint trigger
// waits for a lock) when the client's connection fails: the gap that
// stands for the message sent at its commit goes out once the COMMIT has
// settled, so that a member reloading at its gap reads the work.
func TestSendCommitUnknownGapAfterCommit(t *testing.T) {
	pgtest.SkipPooled(t, "cuts its own connections to the server, and asks PostgreSQL itself when a COMMIT has settled")
	env := pgtest.New(t)
	ctx := context.Background()
	in := pgInstances(t, env, 1, nil)[0]
	sch := env.Schema()
	px, other, rowsN := otherPool(t, env)
	for _, q := range []string{
		"CREATE FUNCTION " + sch + ".hold() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NULL; END $$",
		"CREATE CONSTRAINT TRIGGER hold AFTER INSERT ON " + sch + ".work DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION " + sch + ".hold()",
	} {
		if _, err := env.Admin().ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	var seen []string
	m := in.layer.NewMember(func(e groups.Event) {
		s := string(e.Data)
		if e.Gap {
			// Reload what the lost message would have told.
			n := rowsN()
			s = "gap(rows=" + string(rune('0'+n)) + ")"
		}
		mu.Lock()
		seen = append(seen, s)
		mu.Unlock()
	}, nil)
	defer m.Close()
	if err := m.Join(ctx, "o"); err != nil {
		t.Fatal(err)
	}
	lock, err := env.Admin().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "SELECT pg_advisory_lock(4242)"); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO work VALUES (1)"); err != nil {
					return err
				}
				return in.layer.Send(ctx, "o", []byte("committed work"))
			})
		})
	}()
	dbtest.Eventually(t, "the COMMIT waiting in the deferred trigger", func() bool {
		var n int
		env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE query = 'COMMIT' AND wait_event_type = 'Lock'").Scan(&n)
		return n == 1
	})
	px.Cut() // pgx's cancel request cannot get through either
	refused := px.Refused()
	// The pool tries to ask whether the COMMIT has settled, and cannot
	// while the network is down: no gap yet.
	dbtest.Eventually(t, "the pool trying to ask whether the COMMIT has settled", func() bool {
		return px.Refused() > refused+1 // pgx's cancel request, then the pool's question
	})
	// The COMMIT goes on once the lock is free, and commits: the work is
	// visible; still no gap, the question not yet answered.
	if _, err := lock.ExecContext(ctx, "SELECT pg_advisory_unlock(4242)"); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the work committed", func() bool { return rowsN() == 1 })
	mu.Lock()
	early := append([]string(nil), seen...)
	mu.Unlock()
	if len(early) != 0 {
		t.Fatalf("a gap before the pool could tell the COMMIT had settled: %q", early)
	}
	px.Restore()
	err = <-done
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("want ErrCommitUnknown, got %v", err)
	}
	dbtest.Eventually(t, "the gap", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 1 })
	if err := in.layer.Send(ctx, "o", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "marker", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 2 })
	mu.Lock()
	defer mu.Unlock()
	if seen[0] != "gap(rows=1)" {
		t.Fatalf("member saw %q: its gap came before the transaction it stands for committed (rows=0 at the gap, 1 after); the lost message would have come after the commit", seen)
	}
}

// The gap of a Send whose commit's outcome is unknown goes out as the
// message would have: through the scope of the engine's pool that the
// unit of work holds (its pool's only slot), before what the unit sends
// next.
func TestSendCommitUnknownOneSlot(t *testing.T) {
	pgtest.SkipPooled(t, "cuts its own connections to the server, and asks PostgreSQL itself when a COMMIT has settled")
	env := pgtest.New(t)
	ctx := context.Background()
	var eng *groups.Postgres
	p := dbctx.New(env.Open(t), &dbctx.Options{MaxWorkers: 1, WaitTimeout: 2 * time.Second, TransactionPooling: pgtest.Pooled()})
	defer p.Close()
	eng = groups.NewPostgres(p, &groups.PostgresOptions{ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), SampleEvery: 100 * time.Millisecond})
	l, err := groups.New(eng, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "o"); err != nil {
		t.Fatal(err)
	}
	px, other, rowsN := otherPool(t, env)
	done := make(chan error, 1)
	go func() {
		done <- p.Do(ctx, func(ctx context.Context, s0 *dbctx.Scope) error {
			if _, err := s0.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			return other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if _, err := s.ExecContext(ctx, "INSERT INTO work VALUES (1)"); err != nil {
						return err
					}
					if err := l.Send(ctx, "o", []byte("committed work")); err != nil {
						return err
					}
					px.Mute()
					return nil
				})
			})
		})
	}()
	dbtest.Eventually(t, "the row committed", func() bool { return rowsN() == 1 })
	px.Cut()
	px.Restore() // the database can be asked again
	err = <-done
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("want ErrCommitUnknown, got %v", err)
	}
	if err := l.Send(ctx, "o", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "marker", func() bool { return strings.HasSuffix(events(r), "marker") })
	if got := events(r); got != "gap,marker" {
		t.Fatalf("member got %q, want gap,marker", got)
	}
}

// otherPool makes a table work in env's schema, and a pool of one slot,
// another than the engine's, over a proxy to env's server that the test
// may cut; rows counts work's rows, as PostgreSQL holds them.
func otherPool(t *testing.T, env *pgtest.Env) (px *pgtest.Proxy, other *dbctx.Pool, rows func() int) {
	t.Helper()
	ctx := context.Background()
	if _, err := env.Admin().ExecContext(ctx, "CREATE TABLE "+env.Schema()+".work (n int)"); err != nil {
		t.Fatal(err)
	}
	px = pgtest.NewProxy(t, env)
	db, err := sql.Open("pgx", px.DSN())
	if err != nil {
		t.Fatal(err)
	}
	other = dbctx.New(db, &dbctx.Options{MaxWorkers: 1})
	t.Cleanup(func() { other.Close(); db.Close() })
	return px, other, func() int {
		var n int
		env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM "+env.Schema()+".work").Scan(&n)
		return n
	}
}
