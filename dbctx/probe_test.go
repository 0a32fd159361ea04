package dbctx_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Once the probe has found another service at the address, a unit of
// work gets ErrMisconfigured at once, not after ConnectTimeout: a service
// that waits for what PostgreSQL's client never sends (an SMTP server, an
// HTTP server waiting for a line) held every unit, and its slot, for
// ConnectTimeout. One connect a probe period is still tried for real, so
// that once PostgreSQL answers there the pool connects again.
func TestNotPostgresFailsFast(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	var postgres atomic.Bool // false: an SMTP server; true: a proxy to PostgreSQL
	addr := smtpThenPostgres(t, env, &postgres)
	const every = 1500 * time.Millisecond
	logs, logger := dbtest.NewLogs()
	db := openDSN(t, dsn(pgserver.WithParams(dsn(pgserver.WithTCPAddr(env.DSN(), addr)), "sslmode", "disable")))
	p := dbctx.New(db, &dbctx.Options{ConnectTimeout: 2 * time.Second, Logger: logger})
	p.SetProbeEvery(every)
	defer p.Close()
	ctx := context.Background()
	if err := p.Do(ctx, selectOne); !errors.Is(err, dbctx.ErrUnavailable) {
		t.Fatalf("the first connect: %v, want ErrUnavailable", err)
	}
	dbtest.Eventually(t, "the probe's end", func() bool { return p.ProbesDone() > 0 })
	for range 3 {
		start := time.Now()
		err := p.Do(ctx, selectOne)
		if !errors.Is(err, dbctx.ErrMisconfigured) || !strings.Contains(err.Error(), "not PostgreSQL at "+addr) {
			t.Fatalf("after the probe: %v, want ErrMisconfigured saying what answered", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("after the probe, a unit waited %v for its ErrMisconfigured (ConnectTimeout 2s)", d)
		}
	}
	if n := logs.Count(slog.LevelError, msgMisconfigured); n != 1 {
		t.Errorf("want 1 ERROR record:\n%s", logs)
	}
	// PostgreSQL answers there now: within a probe period or two, a
	// connect is tried and succeeds, and the pool works again.
	postgres.Store(true)
	deadline := time.Now().Add(4*every + 4*time.Second)
	for {
		err := p.Do(ctx, selectOne)
		if err == nil {
			break
		}
		if !errors.Is(err, dbctx.ErrMisconfigured) || time.Now().After(deadline) {
			t.Fatalf("PostgreSQL at the address: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for range 3 {
		if err := p.Do(ctx, selectOne); err != nil {
			t.Fatalf("after the pool connected again: %v", err)
		}
	}
}

// Where the probe found another service at the address, the pool is used
// again promptly once PostgreSQL answers there: within a second or two,
// not only at the next connect tried for real a probe period (30 s) later,
// every unit meanwhile refused with ErrMisconfigured (a 500) without a
// connect. A service that answered in PostgreSQL's place a moment (a
// service moved there for a moment, during a redeploy) made the pool refuse
// for 30 s.
func TestNotPostgresRecoversPromptly(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	var postgres atomic.Bool // false: an SMTP server; true: a proxy to PostgreSQL
	addr := smtpThenPostgres(t, env, &postgres)
	_, logger := dbtest.NewLogs()
	db := openDSN(t, dsn(pgserver.WithParams(dsn(pgserver.WithTCPAddr(env.DSN(), addr)), "sslmode", "disable")))
	p := dbctx.New(db, &dbctx.Options{ConnectTimeout: 2 * time.Second, Logger: logger})
	defer p.Close()
	ctx := context.Background()
	if err := p.Do(ctx, selectOne); !errors.Is(err, dbctx.ErrUnavailable) {
		t.Fatalf("the first connect: %v, want ErrUnavailable", err)
	}
	dbtest.Eventually(t, "the probe's end", func() bool { return p.ProbesDone() > 0 })
	if err := p.Do(ctx, selectOne); !errors.Is(err, dbctx.ErrMisconfigured) {
		t.Fatalf("after the probe: %v, want ErrMisconfigured", err)
	}
	postgres.Store(true)
	start := time.Now()
	for {
		err := p.Do(ctx, selectOne)
		if err == nil {
			break
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("PostgreSQL has answered at the address for %v; the pool still says: %v", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// smtpThenPostgres serves, at the address it returns, an SMTP server's
// banner while postgres is false, and a proxy to env's PostgreSQL once it
// is true.
func smtpThenPostgres(t *testing.T, env *pgtest.Env, postgres *atomic.Bool) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(env.DSN())
	if err != nil {
		t.Fatal(err)
	}
	network, target := "tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	if strings.HasPrefix(cfg.Host, "/") {
		network, target = "unix", filepath.Join(cfg.Host, ".s.PGSQL."+strconv.Itoa(int(cfg.Port)))
	}
	return fakeServer(t, func(c net.Conn) {
		if !postgres.Load() {
			c.Write([]byte("220 mail.example.com ESMTP\r\n"))
			io.Copy(io.Discard, c)
			return
		}
		s, err := net.Dial(network, target)
		if err != nil {
			return
		}
		defer s.Close()
		go func() { io.Copy(s, c); s.Close() }()
		io.Copy(c, s)
	})
}
