package groups_test

import (
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A listener whose ListenDSN reaches a standby (a read replica's URL
// given for the primary's) connected, and then failed every LISTEN
// ("cannot execute LISTEN during recovery"), reconnecting five times a
// second with a WARN each, for ever, while Join returned nil and nothing
// was delivered: New fails with ErrStandbyListener now, and a listener
// that reconnects to a standby is refused, logged once at ERROR, until
// it reaches a primary again. The test plays the standby with the
// listener's check reading a table of its own for pg_is_in_recovery().
func TestListenerOnStandby(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "reaches PostgreSQL through a proxy of its own, straight")
	env := pgtest.New(t)
	ctx := context.Background()
	flag := env.Schema() + ".standby"
	if _, err := env.Admin().ExecContext(ctx, "CREATE TABLE "+flag+" (on_ bool NOT NULL); INSERT INTO "+flag+" VALUES (true); GRANT SELECT ON "+flag+" TO PUBLIC"); err != nil {
		t.Fatal(err)
	}
	standby := func(on bool) {
		t.Helper()
		if _, err := env.Admin().ExecContext(ctx, "UPDATE "+flag+" SET on_ = $1", on); err != nil {
			t.Fatal(err)
		}
	}
	check := "SELECT pg_catalog.pg_backend_pid(), (SELECT on_ FROM " + flag + ")"

	pool := dbctx.New(env.Open(t), nil)
	defer pool.Close()
	e := groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: env.DirectDSN(t), Namespace: env.Schema()})
	e.SetDirectSQL(check)
	l, err := groups.New(e, nil)
	if err == nil {
		l.Close()
		t.Fatal("New took a listener on a standby")
	}
	if !errors.Is(err, groups.ErrStandbyListener) {
		t.Fatalf("New: %v, want ErrStandbyListener", err)
	}

	standby(false)
	px := pgtest.NewProxy(t, env)
	logs, log := dbtest.NewLogs()
	dsn, err := pgserver.WithParams(env.DSNVia(px.Addr()), "sslmode", "disable")
	if err != nil {
		t.Fatal(err)
	}
	var eng *groups.Postgres
	in := newInstance(t, env, func(p *dbctx.Pool) groups.Engine {
		eng = groups.NewPostgres(p, &groups.PostgresOptions{ListenDSN: dsn, Namespace: env.Schema(), Logger: log})
		eng.SetDirectSQL(check)
		return eng
	})
	recs := members(t, []*instance{in}, 1, nil, "g")
	standby(true)
	px.Cut() // the connection breaks; the reconnections find a standby
	px.Restore()
	dbtest.Eventually(t, "the listener refused on a standby", func() bool {
		return errors.Is(in.layer.Ready(), groups.ErrStandbyListener)
	})
	if n := logs.Count(slog.LevelError, "groups: the PostgreSQL listener reconnected to a standby"); n != 1 {
		t.Fatalf("logged %d times at ERROR, want once:\n%s", n, logs)
	}
	standby(false)
	dbtest.Eventually(t, "the listener back", func() bool { return in.layer.Ready() == nil })
	if err := in.layer.Send(ctx, "g", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message after", func() bool { return strings.HasSuffix(events(recs[0]), "after") })
}

// A listener whose ListenDSN reaches another database than the pool's
// (another database of the cluster here) heard none of the pool's
// NOTIFYs: New succeeded, Join and Send returned nil, and nothing was
// ever delivered, nothing logged. New fails with ErrListenerDatabase now.
func TestListenerOnAnotherDatabase(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "names the database in a connection string that names PgBouncer")
	env := pgtest.New(t)
	pool := dbctx.New(env.Open(t), nil)
	defer pool.Close()
	other, err := pgserver.WithParams(env.DirectDSN(t), "dbname", "template1")
	if err != nil {
		t.Fatal(err)
	}
	l, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: other, Namespace: env.Schema()}), nil)
	if err == nil {
		l.Close()
		t.Fatal("New took a listener on another database")
	}
	if !errors.Is(err, groups.ErrListenerDatabase) || !strings.Contains(err.Error(), `"template1"`) {
		t.Fatalf("New: %v, want ErrListenerDatabase naming the listener's database", err)
	}
	// The same database: taken.
	l, err = groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: env.DirectDSN(t), Namespace: env.Schema()}), nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
}

// Start's check that the listener reaches the pool's database is skipped
// where the pool cannot answer, as ErrListenerDatabase's doc says: a pool
// whose address accepts and never answers (a pooler hung, a host behind
// a firewall) took the whole of Start's 10 seconds, and New then failed
// the check of the table of large messages with "context deadline
// exceeded", though the listener reached the database.
func TestListenerCheckPoolStalled(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns []net.Conn
	var mu sync.Mutex
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // accepted, never answered
			mu.Unlock()
		}
	}()
	db, err := sql.Open("pgx", env.DSNVia(ln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	p := dbctx.New(db, &dbctx.Options{Logger: slog.New(slog.DiscardHandler)})
	defer p.Close()
	start := time.Now()
	l, err := groups.New(groups.NewPostgres(p, &groups.PostgresOptions{
		ListenDSN: env.DirectDSN(t), Namespace: env.Schema()}), nil)
	if err != nil {
		t.Fatalf("New after %v: %v", time.Since(start), err)
	}
	l.Close()
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("New took %v", d)
	}
}
