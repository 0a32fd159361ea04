package wsconsumer_test

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func httptestServer(h http.Handler) *httptest.Server {
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.Start()
	return srv
}

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptestServer(h)
	t.Cleanup(srv.Close)
	if wh, ok := h.(*wsconsumer.Handler); ok {
		// Runs before srv.Close: http.Server does not wait for hijacked
		// connections, Shutdown waits for every socket's disconnect.
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := wh.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
	return "ws" + strings.TrimPrefix(srv.URL, "http")
}

func dial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial: %v (%v)", err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

type msg struct {
	ID    int    `json:"id"`
	Op    string `json:"op,omitempty"`
	Name  string `json:"name,omitempty"`
	Error string `json:"error,omitempty"`
}

func send(t *testing.T, c *websocket.Conn, m msg) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	data, _ := json.Marshal(m)
	if err := c.Write(ctx, websocket.MessageText, data); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// recv reads one reply, or returns the close status the server sent.
func recv(t *testing.T, c *websocket.Conn) (msg, websocket.StatusCode) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, data, err := c.Read(ctx)
	if err != nil {
		code := websocket.CloseStatus(err)
		if code == -1 {
			t.Fatalf("read: %v", err)
		}
		return msg{}, code
	}
	var m msg
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("reply %q: %v", data, err)
	}
	return m, 0
}

func roundTrip(t *testing.T, c *websocket.Conn, m msg) msg {
	t.Helper()
	send(t, c, m)
	r, code := recv(t, c)
	if code != 0 {
		t.Fatalf("socket closed with %v", code)
	}
	return r
}

// memoryLayer returns a groups layer in memory, closed when t ends.
func memoryLayer(t *testing.T) *groups.Layer {
	t.Helper()
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { layer.Close() })
	return layer
}
