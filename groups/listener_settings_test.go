package groups_test

import (
	"bytes"
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A lock on the table of large messages held for longer than the
// listener's statements wait (a VACUUM FULL, a CREATE INDEX, a migration
// on it) fails the listener's cleanup, not its connection: the messages
// sent meanwhile reach the members, and no gap. The listener waited for
// the lock, timed out after 10 seconds, dropped its connection and every
// member got a gap, the notifications queued for it lost. See also
// TestLargeBodyLocked.
func TestLargeTableLocked(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"EXCLUSIVE", "ACCESS EXCLUSIVE"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			app := env.AppName() + "_listener"
			listenDSN, err := pgserver.WithParams(env.DirectDSN(t), "application_name", app)
			if err != nil {
				t.Fatal(err)
			}
			in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: listenDSN})[0]
			recs := members(t, []*instance{in}, 1, bigMembers, "locked")
			ctx := context.Background()
			tx, err := env.Admin().BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "LOCK TABLE "+env.Schema()+".dbscope_groups_payloads IN "+mode+" MODE"); err != nil {
				t.Fatal(err)
			}
			// The cleanup, at the listener's next tick, waits for the lock.
			waiting := func() bool {
				var n int
				err := env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", app).Scan(&n)
				if err != nil {
					t.Error(err)
				}
				return n > 0
			}
			dbtest.Eventually(t, "the listener waiting for the lock", waiting)
			large := body(0, 1, 20000, false)
			want := [][]byte{[]byte("small")}
			if err := in.layer.Send(ctx, "locked", []byte("small")); err != nil {
				t.Fatal(err)
			}
			if mode == "ACCESS EXCLUSIVE" {
				// Its INSERT waits for the lock as well: from another
				// goroutine, and it reaches the listener once the lock
				// is released.
				sent := make(chan error, 1)
				go func() { sent <- in.layer.Send(ctx, "locked", large) }()
				dbtest.Eventually(t, "the small message", func() bool { return recs[0].n.Load() >= 1 })
				tx.Rollback()
				if err := <-sent; err != nil {
					t.Fatal(err)
				}
				want = append(want, large)
			}
			if err := in.layer.Send(ctx, "locked", []byte("after")); err != nil {
				t.Fatal(err)
			}
			want = append(want, []byte("after"))
			dbtest.Eventually(t, "every message", func() bool { return recs[0].n.Load() >= int64(len(want)) })
			tx.Rollback()
			got := recs[0].got()
			for i, e := range got {
				if e.Gap {
					t.Fatalf("event %d is a gap: the listener's connection was dropped (reconnects %d)", i, in.layer.Stats().Reconnects)
				}
				if i >= len(want) || !bytes.Equal(e.Data, want[i]) {
					t.Fatalf("event %d: %.20q", i, e.Data)
				}
			}
			if r := in.layer.Stats().Reconnects; r != 0 {
				t.Fatalf("the listener reconnected %d times", r)
			}
		})
	}
}

// A large message whose body cannot be read, its table locked (ACCESS
// EXCLUSIVE) past the listener's lock_timeout as the reference arrives, is
// a gap for its group, counted; the listener keeps its connection, and
// the small message after it is delivered. The listener's read of the
// body timed out after 10 seconds, dropped its connection, and the small
// message was lost.
func TestLargeBodyLocked(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the listener goes through a proxy of the test's, to the server: LISTEN needs a direct connection")
	env := pgtest.New(t)
	rx := pgtest.NewProxy(t, env)
	in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: rx.DSN(), SampleEvery: time.Hour})[0]
	recs := members(t, []*instance{in}, 1, bigMembers, "locked")
	ctx := context.Background()
	rx.Stall()
	if err := in.layer.Send(ctx, "locked", body(0, 1, 20000, false)); err != nil {
		t.Fatal(err)
	}
	tx, err := env.Admin().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "LOCK TABLE "+env.Schema()+".dbscope_groups_payloads IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	if err := in.layer.Send(ctx, "locked", []byte("after")); err != nil {
		t.Fatal(err)
	}
	rx.Restore()
	dbtest.Eventually(t, "two events", func() bool { return recs[0].n.Load() >= 2 })
	tx.Rollback()
	got := recs[0].got()
	if !got[0].Gap || got[1].Gap || string(got[1].Data) != "after" {
		t.Fatalf("got gap=%v, then gap=%v %.20q; want the large message's gap, then the small one", got[0].Gap, got[1].Gap, got[1].Data)
	}
	if st := in.layer.Stats(); st.Reconnects != 0 {
		t.Fatalf("the listener reconnected: %+v", st)
	}
	if st := in.pg.Stats(); st.LargeMissing != 1 {
		t.Fatalf("want the body counted missing: %+v", st)
	}
}

// A database (or role) whose idle_session_timeout is shorter than the
// listener's quiet spells does not end the listener's session: it waits
// for notifications, which is not the idleness the setting is for. The
// server ended the session at each quiet spell, and every member got a
// gap, the messages sent meanwhile lost.
func TestListenerIdleSessionTimeout(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "names the database in a connection string that names PgBouncer")
	env := pgtest.New(t)
	dsn := env.Database(t)
	name := env.Schema() + "_db"
	ctx := context.Background()
	if _, err := env.Admin().ExecContext(ctx, "ALTER DATABASE "+name+" SET idle_session_timeout = '300ms'"); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()
	app := env.AppName() + "_listener"
	listenDSN, err := pgserver.WithParams(dsn, "application_name", app)
	if err != nil {
		t.Fatal(err)
	}
	e := groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: listenDSN, SampleEvery: time.Hour, MaxPayload: 7999})
	l, err := groups.New(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "quiet"); err != nil {
		t.Fatal(err)
	}
	// Idle three times the timeout, and still there; or gone.
	quiet := func() bool {
		var n int
		err := env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "+
			"AND application_name = $2 AND state = 'idle' AND now() - state_change > interval '900 milliseconds'", name, app).Scan(&n)
		if err != nil {
			t.Error(err)
		}
		return n > 0 || l.Stats().Reconnects > 0
	}
	dbtest.Eventually(t, "a quiet spell of the listener", quiet)
	if err := l.Send(ctx, "quiet", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message", func() bool { return r.n.Load() > 0 })
	if st := l.Stats(); st.Reconnects != 0 {
		t.Fatalf("the listener's session was ended: %+v", st)
	}
	if got := r.got(); got[0].Gap || string(got[0].Data) != "hi" {
		t.Fatalf("got gap=%v %q", got[0].Gap, got[0].Data)
	}
}

// A cleanup that takes longer than the listener's 10-second bound on a
// statement (a backlog of rows older than PayloadMaxAge, here made slow by
// a trigger) fails, logged, and keeps the connection: a message sent
// meanwhile is delivered, and no gap. The bound closed the connection,
// every member got a gap, and the next connection's first cleanup did
// the same, for as long as the backlog lasted: for ever, as each cleanup
// rolled back.
func TestListenerSlowCleanup(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := pgInstances(t, env, 1, nil)[0]
	recs := members(t, []*instance{in}, 1, bigMembers, "g")
	ctx := context.Background()
	tbl := env.Schema() + ".dbscope_groups_payloads"
	for _, q := range []string{
		"CREATE FUNCTION " + env.Schema() + ".slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.5); RETURN OLD; END$$",
		"CREATE TRIGGER slow BEFORE DELETE ON " + tbl + " FOR EACH ROW EXECUTE FUNCTION " + env.Schema() + ".slow()",
		"INSERT INTO " + tbl + " SELECT gen_random_uuid(), now() - interval '1 hour', 'old' FROM generate_series(1, 30)",
	} {
		if _, err := env.Admin().ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	// The listener's next cleanup runs into the trigger: a message sent
	// then waits for it to end.
	dbtest.Eventually(t, "the cleanup under way", func() bool {
		var n int
		err := env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND wait_event = 'PgSleep'", env.Role()).Scan(&n)
		if err != nil {
			t.Error(err)
		}
		return n > 0
	})
	if err := in.layer.Send(ctx, "g", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message, or a reconnection", func() bool {
		return recs[0].n.Load() > 0 || in.layer.Stats().Reconnects > 0
	})
	if st := in.layer.Stats(); st.Reconnects > 0 {
		t.Fatalf("the listener reconnected: %+v", st)
	}
	if got := recs[0].got(); got[0].Gap || string(got[0].Data) != "after" {
		t.Fatalf("got gap=%v %q, want the message", got[0].Gap, got[0].Data)
	}
}

// A backlog of old rows that one DELETE cannot delete within the
// listener's statement_timeout (a slow DELETE trigger here; rows kept
// while the listener was down, at scale) is deleted over ticks, in
// batches: deleted in one statement, the cleanup was canceled at 8 s at
// every tick and rolled back, and the rows stayed for good.
func TestCleanupBacklogInBatches(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	o := groups.PostgresOptions{ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), SampleEvery: 100 * time.Millisecond}
	newInstance(t, env, func(p *dbctx.Pool) groups.Engine {
		e := groups.NewPostgres(p, &o)
		e.SetCleanupBatch(10)
		return e
	})
	ctx := context.Background()
	tbl := env.Schema() + ".dbscope_groups_payloads"
	for _, q := range []string{
		"CREATE FUNCTION " + env.Schema() + ".slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.1); RETURN OLD; END$$",
		"CREATE TRIGGER slow BEFORE DELETE ON " + tbl + " FOR EACH ROW EXECUTE FUNCTION " + env.Schema() + ".slow()",
		// 100 rows at 0.1 s each: 10 s in one statement.
		"INSERT INTO " + tbl + " SELECT gen_random_uuid(), now() - interval '1 hour', 'old' FROM generate_series(1, 100)",
	} {
		if _, err := env.Admin().ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	dbtest.Eventually(t, "the backlog deleted", func() bool {
		var n int
		if err := env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM "+tbl).Scan(&n); err != nil {
			t.Error(err)
		}
		return n == 0
	})
}
