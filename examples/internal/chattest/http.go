package chattest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/examples/internal/chat"
)

// HTTP checks the page and the JSON endpoints: create answers 201,
// list returns what was created, both carry Server-Timing, bad input is
// refused with 400, and the pool is idle afterwards.
func HTTP(t *testing.T, s *Server) {
	resp, body := s.do(t, "GET", "/", "")
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "new WebSocket(") {
		t.Fatalf("GET /: %s, %.80q", resp.Status, body)
	}

	m := s.post(t, chat.Post{Room: "http", Author: "ann", Body: "hello over HTTP"})
	if m.ID == 0 || m.Room != "http" || m.Author != "ann" || m.Body != "hello over HTTP" || m.Created.IsZero() {
		t.Fatalf("created %+v", m)
	}
	// Defaults: room lobby, author anonymous; spaces trimmed.
	if d := s.post(t, chat.Post{Body: "  defaults  "}); d.Room != chat.DefaultRoom || d.Author != "anonymous" || d.Body != "defaults" {
		t.Fatalf("created with defaults %+v", d)
	}

	resp, body = s.do(t, "GET", "/api/messages?room=http", "")
	checkTiming(t, resp)
	var msgs []chat.Message
	if err := json.Unmarshal([]byte(body), &msgs); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("list: %s %q: %v", resp.Status, body, err)
	}
	if len(msgs) != 1 || !same(msgs[0], m) {
		t.Fatalf("list = %+v, want [%+v]", msgs, m)
	}
	if _, body := s.do(t, "GET", "/api/messages?room=empty", ""); strings.TrimSpace(body) != "[]" {
		t.Fatalf("empty room: %q", body)
	}

	for _, bad := range []string{`{"body":""}`, `{"body":"   "}`, `{nope`, `{"body":"` + strings.Repeat("x", 2001) + `"}`} {
		if resp, body := s.do(t, "POST", "/api/messages", bad); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST %.40s: %s %q, want 400", bad, resp.Status, body)
		}
	}
	if resp, _ := s.do(t, "GET", "/api/messages?room="+strings.Repeat("r", 65), ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("long room name: %s, want 400", resp.Status)
	}

	st := s.Stats(t)
	if st.MaxWorkers == 0 || st.Acquired == 0 || st.InUse != 0 || st.Pinned != 0 || st.Discarded.Total() != 0 {
		t.Fatalf("pool stats after the requests: %+v", st)
	}
}

// post creates a message over HTTP, checking 201 and Server-Timing.
func (s *Server) post(t *testing.T, p chat.Post) chat.Message {
	t.Helper()
	data, _ := json.Marshal(p)
	resp, body := s.do(t, "POST", "/api/messages", string(data))
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/messages: %s %q, want 201", resp.Status, body)
	}
	checkTiming(t, resp)
	var m chat.Message
	if err := json.Unmarshal([]byte(body), &m); err != nil {
		t.Fatalf("POST /api/messages: %q: %v", body, err)
	}
	return m
}

// Stats returns the pool's counters from GET /debug/dbstats.
func (s *Server) Stats(t *testing.T) dbctx.Stats {
	t.Helper()
	resp, body := s.do(t, "GET", "/debug/dbstats", "")
	var st dbctx.Stats
	if err := json.Unmarshal([]byte(body), &st); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /debug/dbstats: %s %q: %v", resp.Status, body, err)
	}
	return st
}

func checkTiming(t *testing.T, resp *http.Response) {
	t.Helper()
	if st := resp.Header.Get("Server-Timing"); !strings.HasPrefix(st, "db;dur=") {
		t.Errorf("%s %s: Server-Timing %q, want db;dur=…", resp.Request.Method, resp.Request.URL.Path, st)
	}
}

// same reports whether a and b are the same stored message.
func same(a, b chat.Message) bool {
	return a.ID == b.ID && a.Room == b.Room && a.Author == b.Author && a.Body == b.Body && a.Created.Equal(b.Created)
}

// Tenants checks that each tenant sees its own messages and no other's,
// over HTTP and over sockets in both styles, though their rooms share a
// name: the row-level-security policy reads the tenant every statement
// runs with, which the Tenant middleware declares per request and so per
// socket.
func Tenants(t *testing.T, s *Server) {
	acme := s.postAs(t, "acme", chat.Post{Room: "shared", Author: "ann", Body: "for acme"})
	if acme.Tenant != "acme" {
		t.Fatalf("acme's message is %q's", acme.Tenant)
	}
	globex := s.postAs(t, "globex", chat.Post{Room: "shared", Author: "bob", Body: "for globex"})
	for tenant, want := range map[string]chat.Message{"acme": acme, "globex": globex} {
		resp, body := s.doAs(t, tenant, "GET", "/api/messages?room=shared", "")
		var msgs []chat.Message
		if err := json.Unmarshal([]byte(body), &msgs); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s lists: %s %q: %v", tenant, resp.Status, body, err)
		}
		if len(msgs) != 1 || !same(msgs[0], want) {
			t.Fatalf("%s lists %+v, want [%+v] alone", tenant, msgs, want)
		}
	}
	for _, style := range []string{"sync", "async"} {
		a, ah := s.DialAs(t, "acme", style, "shared")
		g, gh := s.DialAs(t, "globex", style, "shared")
		if !only(ah, "acme", acme) || !only(gh, "globex", globex) {
			t.Fatalf("%s: histories %+v and %+v, want each tenant's own", style, ah, gh)
		}
		send(t, a, chat.In{Type: "say", Author: "ann", Body: "acme only, " + style})
		expectMessage(t, a, "acme only, "+style)
		send(t, g, chat.In{Type: "say", Author: "bob", Body: "globex only, " + style})
		// globex's socket gets globex's message, not acme's sent before it.
		if m := expectMessage(t, g, "globex only, "+style); m.Tenant != "globex" {
			t.Fatalf("%s: globex got %+v", style, m)
		}
	}
	if resp, _ := s.do(t, "GET", "/api/messages?tenant=bad%00%ff", ""); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("an invalid tenant: %s, want 400", resp.Status)
	}
	// Two X-Tenant headers, the client's and one a proxy appended: which
	// one is meant is anyone's guess, so neither is taken.
	for _, method := range []string{"GET", "POST"} {
		req, err := http.NewRequest(method, s.URL+"/api/messages?room=shared", strings.NewReader(`{"room":"shared","body":"twice"}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Add("X-Tenant", "globex")
		req.Header.Add("X-Tenant", "acme")
		resp, err := s.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s with two X-Tenant headers: %s, want 400", method, resp.Status)
		}
	}
}

// postAs creates a message over HTTP as tenant's.
func (s *Server) postAs(t *testing.T, tenant string, p chat.Post) chat.Message {
	t.Helper()
	data, _ := json.Marshal(p)
	resp, body := s.doAs(t, tenant, "POST", "/api/messages", string(data))
	var m chat.Message
	if err := json.Unmarshal([]byte(body), &m); err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("post as %s: %s %q: %v", tenant, resp.Status, body, err)
	}
	return m
}

// only reports whether msgs are all tenant's, first among them first.
func only(msgs []chat.Message, tenant string, first chat.Message) bool {
	if len(msgs) == 0 || !same(msgs[0], first) {
		return false
	}
	for _, m := range msgs {
		if m.Tenant != tenant {
			return false
		}
	}
	return true
}
