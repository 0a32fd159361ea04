package dbprom_test

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// The consumer's collector exports its handler's counters: sockets open
// now, upgrades by result, failed callbacks by cause, each as the handler
// answered real requests.
func TestConsumerCollector(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	p := dbctx.New(env.Open(t), nil)
	t.Cleanup(func() { p.Close() })
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Connect: func(ctx context.Context, s *wsconsumer.Session) error {
			if s.Request().URL.Query().Has("reject") {
				return wsconsumer.Reject(http.StatusForbidden, "no")
			}
			return nil
		},
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			var n int
			if err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
				return err
			}
			if string(data) == "fail" {
				return errors.New("the handler's own error")
			}
			return s.Send(ctx, websocket.MessageText, data)
		},
	}, &wsconsumer.Options{Logger: slog.New(slog.DiscardHandler)})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	t.Cleanup(func() { h.Shutdown(context.Background()) })
	c := dbprom.NewConsumerCollector(h, &dbprom.Options{ConstLabels: map[string]string{"endpoint": "echo"}})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url := "ws" + strings.TrimPrefix(srv.URL, "http")
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.Read(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := websocket.Dial(ctx, url+"?reject", nil); err == nil {
		t.Fatal("Connect's Reject: the upgrade succeeded")
	}
	resp, err := http.Get(srv.URL) // no upgrade at all
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	open := gather(t, c)

	if err := ws.Write(ctx, websocket.MessageText, []byte("fail")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ws.Read(ctx); websocket.CloseStatus(err) != websocket.StatusInternalError {
		t.Fatalf("after the handler's error: %v, want a close 1011", err)
	}
	dbtest.Eventually(t, "the socket to end", func() bool { return h.Stats().Sockets == 0 })
	closed := gather(t, c)

	l := `{endpoint="echo",` // labels in order of name, as gather writes them
	for _, tc := range []struct {
		name         string
		open, closed float64
	}{
		{`dbscope_websocket_sockets{endpoint="echo"}`, 1, 0},
		{`dbscope_websocket_upgrades_total` + l + `result="accepted"}`, 1, 1},
		{`dbscope_websocket_upgrades_total` + l + `result="bad_upgrade"}`, 1, 1},
		{`dbscope_websocket_upgrades_total` + l + `result="refused"}`, 0, 0},
		{`dbscope_websocket_upgrades_total` + l + `result="rejected"}`, 1, 1},
		{`dbscope_websocket_callback_errors_total{cause="busy",endpoint="echo"}`, 0, 0},
		{`dbscope_websocket_callback_errors_total{cause="failed",endpoint="echo"}`, 0, 1},
		{`dbscope_websocket_callback_errors_total{cause="client_gone",endpoint="echo"}`, 0, 0},
	} {
		got, ok := open[tc.name]
		if !ok || got != tc.open {
			t.Errorf("socket open: %s = %v (exported %v), want %v", tc.name, got, ok, tc.open)
		}
		if got, ok := closed[tc.name]; !ok || got != tc.closed {
			t.Errorf("socket closed by the error: %s = %v (exported %v), want %v", tc.name, got, ok, tc.closed)
		}
	}
	if len(open) != 8 || len(closed) != 8 {
		t.Errorf("%d and %d series, want 8: %v", len(open), len(closed), closed)
	}
}
