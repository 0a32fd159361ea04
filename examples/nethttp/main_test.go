package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"testing"

	"github.com/dbscope/dbscope/examples/internal/chatserver"
	"github.com/dbscope/dbscope/examples/internal/chattest"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// start runs this example on a random port against a fresh schema.
func start(t *testing.T) *chattest.Server { return chattest.Start(t, runOn) }

func runOn(ctx context.Context, ln net.Listener, dsn, listenDSN string, log *slog.Logger) error {
	return run(ctx, chatserver.Config{Listener: ln, DSN: dsn, ListenDSN: listenDSN, Log: log})
}

func TestHTTP(t *testing.T) {
	t.Parallel()
	chattest.HTTP(t, start(t))
}

func TestTenants(t *testing.T) {
	t.Parallel()
	chattest.Tenants(t, start(t))
}

func TestWebsockets(t *testing.T) {
	t.Parallel()
	chattest.Websockets(t, start(t))
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	chattest.Metrics(t, start(t))
}

func TestShutdown(t *testing.T) {
	t.Parallel()
	chattest.Shutdown(t, start(t))
}

func TestTwoInstances(t *testing.T) {
	t.Parallel()
	s := start(t)
	chattest.TwoInstances(t, s, s.Another(t, runOn))
}

func TestBrowser(t *testing.T) {
	t.Parallel()
	s := start(t)
	chattest.Browser(t, s, s.Another(t, runOn))
}

func TestTwoInstancesNATS(t *testing.T) {
	t.Parallel()
	nats := natstest.Start(t)
	runOnNATS := func(ctx context.Context, ln net.Listener, dsn, listenDSN string, log *slog.Logger) error {
		return run(ctx, chatserver.Config{Listener: ln, DSN: dsn, Layer: nats.URL, Log: log})
	}
	s := chattest.Start(t, runOnNATS)
	chattest.TwoInstancesNATS(t, s, s.Another(t, runOnNATS), nats)
}

func TestInput(t *testing.T) {
	t.Parallel()
	chattest.Input(t, start(t))
}

func TestAdminApart(t *testing.T) {
	t.Parallel()
	chattest.AdminApart(t, func(ctx context.Context, ln, admin net.Listener, dsn, listenDSN string, log *slog.Logger) error {
		return run(ctx, chatserver.Config{Listener: ln, Admin: admin, NoServerTiming: true, DSN: dsn, ListenDSN: listenDSN, Log: log})
	})
}

func TestOTel(t *testing.T) {
	t.Parallel()
	chattest.OTel(t, func(out io.Writer) chattest.RunFunc {
		return func(ctx context.Context, ln net.Listener, dsn, listenDSN string, log *slog.Logger) error {
			return run(ctx, chatserver.Config{Listener: ln, DSN: dsn, ListenDSN: listenDSN, Log: log, OTel: true, OTelOut: out})
		}
	})
}

func TestSaidThenGone(t *testing.T) {
	t.Parallel()
	chattest.SaidThenGone(t, start(t))
}

func TestPgBouncer(t *testing.T) {
	t.Parallel()
	chattest.PgBouncer(t, func(ctx context.Context, ln net.Listener, dsn, listenDSN string, log *slog.Logger) error {
		return run(ctx, chatserver.Config{Listener: ln, DSN: dsn, ListenDSN: listenDSN, TransactionPooling: true, Log: log})
	})
}

func TestCrossSite(t *testing.T) {
	t.Parallel()
	chattest.CrossSite(t, start(t))
}

func TestStartTogether(t *testing.T) {
	t.Parallel()
	chattest.StartTogether(t, runOn)
}

func TestSlowBody(t *testing.T) {
	t.Parallel()
	chattest.SlowBody(t, start(t))
}
