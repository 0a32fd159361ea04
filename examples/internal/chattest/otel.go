package chattest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/examples/internal/chat"
)

// OTel checks what a server run with -otel exports, as JSON, to the
// writer run is given: a request's span with its statement's span under
// it, and a websocket message's (sync and async) with its INSERT's under
// it; then the pool's metrics.
func OTel(t *testing.T, run func(out io.Writer) RunFunc) {
	var out lockedBuffer
	s := Start(t, run(&out))
	if resp, body := s.do(t, http.MethodGet, "/api/messages?room=otel", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/messages: %s %s", resp.Status, body)
	}
	for _, style := range []string{"sync", "async"} {
		c, _ := s.Dial(t, style, "otel")
		send(t, c, chat.In{Type: "say", Author: "ann", Body: "traced " + style})
		expectMessage(t, c, "traced "+style)
		c.Close(websocket.StatusNormalClosure, "")
	}
	// Stopping shuts the SDK down, which exports what is pending.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}

	type span struct {
		Name        string
		SpanContext *struct{ SpanID string }
		Parent      struct{ SpanID string }
	}
	var spans []span
	var metrics []string
	dec := json.NewDecoder(bytes.NewReader(out.Bytes()))
	for {
		var v struct {
			span
			ScopeMetrics []struct{ Metrics []struct{ Name string } }
		}
		if err := dec.Decode(&v); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("exported JSON: %v", err)
		}
		if v.SpanContext != nil {
			spans = append(spans, v.span)
		}
		for _, sm := range v.ScopeMetrics {
			for _, m := range sm.Metrics {
				metrics = append(metrics, m.Name)
			}
		}
	}
	children := func(parent span) []string {
		var names []string
		for _, s := range spans {
			if s.Parent.SpanID == parent.SpanContext.SpanID {
				names = append(names, s.Name)
			}
		}
		return names
	}
	var receives, requests int
	for _, s := range spans {
		switch {
		case s.Name == "websocket receive" && slices.Contains(children(s), "INSERT"):
			receives++
		case strings.HasPrefix(s.Name, "GET") && slices.Contains(children(s), "SELECT"): // otelhttp's
			requests++
		}
	}
	if receives != 2 || requests == 0 {
		t.Fatalf("%d receive spans with an INSERT under them (want 2), %d GET spans with a SELECT; the spans: %+v",
			receives, requests, spans)
	}
	if !slices.Contains(metrics, "db.client.connection.count") {
		t.Fatalf("metrics exported: %q", metrics)
	}
}

// lockedBuffer is a bytes.Buffer the exporters' goroutines write to.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return bytes.Clone(b.buf.Bytes())
}
