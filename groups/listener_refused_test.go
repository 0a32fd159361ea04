package groups_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A listener whose reconnections PostgreSQL refuses (its role may no
// longer log in: a misconfiguration an operator must fix) says so once,
// at ERROR, with the server's reason, however often it tries; once it is
// back, the next refusal is logged again.
func TestListenerRefusedLoggedOnce(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the listener goes through a proxy of the test's, to the server: LISTEN needs a direct connection")
	env := pgtest.New(t)
	px := pgtest.NewProxy(t, env)
	logs, logger := dbtest.NewLogs()
	in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: px.DSN(), SampleEvery: time.Hour, Logger: logger})[0]
	m := in.layer.NewMember(func(groups.Event) {}, nil)
	defer m.Close()
	if err := m.Join(context.Background(), "g"); err != nil {
		t.Fatal(err)
	}
	login := func(can bool) {
		t.Helper()
		q := "ALTER ROLE " + env.Role() + " NOLOGIN"
		if can {
			q = "ALTER ROLE " + env.Role() + " LOGIN"
		}
		if _, err := env.Admin().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { login(true) })
	const msg = "groups: the PostgreSQL listener's reconnection was refused"
	for outage := 1; outage <= 2; outage++ {
		login(false)
		px.Cut()
		dbtest.Eventually(t, "the listener down", func() bool { return in.layer.Ready() != nil })
		before := px.Accepted()
		px.Restore()
		// Several attempts, each refused by PostgreSQL.
		dbtest.Eventually(t, "the listener to try again", func() bool { return px.Accepted() >= before+4 })
		if n := logs.Count(slog.LevelError, msg); n != outage {
			t.Fatalf("outage %d: %d records %q at ERROR, want %d:\n%s", outage, n, msg, outage, logs)
		}
		login(true)
		dbtest.Eventually(t, "the listener back", func() bool { return in.layer.Ready() == nil })
	}
}
