package chattest

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/examples/internal/chat"
)

// CrossSite checks that a page of another site cannot post with its
// visitor's credentials (a form, or fetch with text/plain: no CORS
// preflight), as it cannot open a socket: 403, nothing stored. The
// page's own requests, and clients that are no browser, post as before.
func CrossSite(t *testing.T, s *Server) {
	body := `{"room":"xsite","body":"forged"}`
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
		{"Origin": "https://evil.example"}, // an older browser: Origin alone
		{"Sec-Fetch-Site": "same-site", "Origin": "https://sub.evil.example"},
	} {
		resp := s.send(t, "POST", "/api/messages?tenant=acme", body, h)
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("POST with %v: %s, want 403", h, resp.Status)
		}
	}
	for _, h := range []map[string]string{
		{"Sec-Fetch-Site": "same-origin", "Origin": s.URL},
		{"Origin": s.URL},
		nil, // curl
	} {
		resp := s.send(t, "POST", "/api/messages?tenant=acme", `{"room":"xsite","body":"own"}`, h)
		if resp.StatusCode != http.StatusCreated {
			t.Errorf("POST with %v: %s, want 201", h, resp.Status)
		}
	}
	resp, list := s.doAs(t, "acme", "GET", "/api/messages?room=xsite", "")
	var msgs []chat.Message
	if err := json.Unmarshal([]byte(list), &msgs); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %s %q: %v", resp.Status, list, err)
	}
	for _, m := range msgs {
		if m.Body != "own" {
			t.Errorf("stored from another site: %+v", m)
		}
	}
	if len(msgs) != 3 {
		t.Errorf("%d messages stored, want the 3 of the site's own", len(msgs))
	}
}

// send sends one request, with a text/plain body as a cross-site form or
// fetch may, and headers h, and returns the response, its body read.
func (s *Server) send(t *testing.T, method, path, body string, h map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/plain")
	for k, v := range h {
		req.Header.Set(k, v)
	}
	resp, err := s.Client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	resp.Body.Close()
	return resp
}
