package wsconsumer

import (
	"bufio"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// hijackRecorder is a ResponseRecorder that is an http.Hijacker whose
// Hijack fails: Accept, given one, goes as far as the hijack, so a
// request it takes shows as 101.
type hijackRecorder struct{ *httptest.ResponseRecorder }

func (hijackRecorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return nil, nil, errors.New("no hijack in tests")
}

// upgradeCase is a request and the accept options it is judged with.
type upgradeCase struct {
	method, proto             string
	host, connection, upgrade string
	version, origin           string
	keys                      []string
	patterns                  []string
	insecure, noHijack        bool
}

func (c upgradeCase) request() *http.Request {
	r := httptest.NewRequest(c.method, "http://"+c.host+"/ws", nil)
	r.Host = c.host
	if c.proto == "HTTP/1.0" {
		r.Proto, r.ProtoMajor, r.ProtoMinor = c.proto, 1, 0
	}
	for k, v := range map[string]string{"Connection": c.connection, "Upgrade": c.upgrade,
		"Sec-WebSocket-Version": c.version, "Origin": c.origin} {
		if v != "" {
			r.Header.Set(k, v)
		}
	}
	for _, k := range c.keys {
		r.Header.Add("Sec-WebSocket-Key", k)
	}
	return r
}

// judge runs verifyUpgrade and websocket.Accept on the same request, each
// on a recorder of its own, and fails t where they judge it apart: Accept
// reaching the hijack (101) where verifyUpgrade refuses, or refusing
// where it does not, or answering with another status, headers or body.
func judge(t *testing.T, c upgradeCase) (status int) {
	t.Helper()
	opts := &websocket.AcceptOptions{OriginPatterns: c.patterns, InsecureSkipVerify: c.insecure}
	recorder := func() http.ResponseWriter {
		if c.noHijack {
			return httptest.NewRecorder()
		}
		return hijackRecorder{httptest.NewRecorder()}
	}
	mine, theirs := recorder(), recorder()
	ue := verifyUpgrade(mine, c.request(), opts)
	websocket.Accept(theirs, c.request(), opts)
	got, want := rec(mine), rec(theirs)
	if ue == nil {
		if want.Code != http.StatusSwitchingProtocols {
			t.Fatalf("%+v: verifyUpgrade accepts, Accept answers %d %q", c, want.Code, want.Body)
		}
		return http.StatusSwitchingProtocols
	}
	ue.answer(mine)
	if got.Code != want.Code || got.Body.String() != want.Body.String() || !sameHeader(got.Header(), want.Header()) {
		t.Fatalf("%+v:\nverifyUpgrade: %d %v %q\nAccept:        %d %v %q", c,
			got.Code, got.Header(), got.Body, want.Code, want.Header(), want.Body)
	}
	return got.Code
}

func rec(w http.ResponseWriter) *httptest.ResponseRecorder {
	if h, ok := w.(hijackRecorder); ok {
		return h.ResponseRecorder
	}
	return w.(*httptest.ResponseRecorder)
}

func sameHeader(a, b http.Header) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if strings.Join(v, "\x00") != strings.Join(b[k], "\x00") {
			return false
		}
	}
	return true
}

const goodKey = "dGhlIHNhbXBsZSBub25jZQ=="

func valid() upgradeCase {
	return upgradeCase{method: "GET", host: "app.example", connection: "Upgrade", upgrade: "websocket",
		version: "13", keys: []string{goodKey}}
}

// verifyUpgrade judges requests as websocket.Accept does, and answers
// those it refuses as Accept does: the same status, headers and body.
func TestVerifyUpgradeAsAccept(t *testing.T) {
	with := func(f func(*upgradeCase)) upgradeCase {
		c := valid()
		f(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		c    upgradeCase
		want int
	}{
		{"valid", valid(), 101},
		{"tokens in any case, among others", with(func(c *upgradeCase) {
			c.connection, c.upgrade = "keep-alive, UPGRADE", "WebSocket"
		}), 101},
		{"plain GET", upgradeCase{method: "GET", host: "app.example"}, 426},
		{"HTTP/1.0", with(func(c *upgradeCase) { c.proto = "HTTP/1.0" }), 426},
		{"no Connection: upgrade", with(func(c *upgradeCase) { c.connection = "keep-alive" }), 426},
		{"no Upgrade: websocket", with(func(c *upgradeCase) { c.upgrade = "h2c" }), 426},
		{"POST", with(func(c *upgradeCase) { c.method = "POST" }), 405},
		{"version 8", with(func(c *upgradeCase) { c.version = "8" }), 400},
		{"no version", with(func(c *upgradeCase) { c.version = "" }), 400},
		{"no key", with(func(c *upgradeCase) { c.keys = nil }), 400},
		{"two keys", with(func(c *upgradeCase) { c.keys = []string{goodKey, goodKey} }), 400},
		{"key not base64", with(func(c *upgradeCase) { c.keys = []string{"not a key"} }), 400},
		{"key of 15 bytes", with(func(c *upgradeCase) { c.keys = []string{"dGhlIHNhbXBsZSBub25j"} }), 400},
		{"key with spaces around", with(func(c *upgradeCase) { c.keys = []string{" " + goodKey + " "} }), 101},
		{"same origin", with(func(c *upgradeCase) { c.origin = "https://APP.example" }), 101},
		{"foreign origin", with(func(c *upgradeCase) { c.origin = "https://evil.example" }), 403},
		{"origin null", with(func(c *upgradeCase) { c.origin = "null" }), 403},
		{"origin not a URL", with(func(c *upgradeCase) { c.origin = "http://%zz" }), 403},
		{"origin matching a pattern", with(func(c *upgradeCase) {
			c.origin, c.patterns = "https://chat.example.org", []string{"*.example.org"}
		}), 101},
		{"origin not matching a pattern", with(func(c *upgradeCase) {
			c.origin, c.patterns = "https://example.org.evil.example", []string{"*.example.org"}
		}), 403},
		{"pattern with a scheme, origin with another", with(func(c *upgradeCase) {
			c.origin, c.patterns = "http://chat.example.org", []string{"https://*.example.org"}
		}), 403},
		{"pattern with a scheme, origin with it", with(func(c *upgradeCase) {
			c.origin, c.patterns = "https://chat.example.org", []string{"https://*.example.org"}
		}), 101},
		{"foreign origin, InsecureSkipVerify", with(func(c *upgradeCase) {
			c.origin, c.insecure = "https://evil.example", true
		}), 101},
		{"not hijackable", with(func(c *upgradeCase) { c.noHijack = true }), 501},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := judge(t, tc.c); got != tc.want {
				t.Errorf("status %d, want %d", got, tc.want)
			}
		})
	}
}

// FuzzVerifyUpgrade looks for a request that verifyUpgrade and
// websocket.Accept judge apart.
func FuzzVerifyUpgrade(f *testing.F) {
	f.Add("GET", "app.example", "Upgrade", "websocket", "13", goodKey, "", "")
	f.Add("GET", "app.example", "upgrade, keep-alive", "WebSocket", "13", goodKey, "https://x.example.org", "*.example.org")
	f.Add("PUT", "a", "", "", "8", "short", "null", "[")
	f.Fuzz(func(t *testing.T, method, host, connection, upgrade, version, key, origin, pattern string) {
		if !validMethod(method) {
			return // httptest.NewRequest panics on these
		}
		c := upgradeCase{method: method, host: host, connection: connection, upgrade: upgrade,
			version: version, keys: []string{key}, origin: origin}
		if pattern != "" {
			c.patterns = []string{pattern}
		}
		defer func() {
			if r := recover(); r != nil && strings.Contains(r.(string), "httptest") {
				t.Skip("a request httptest cannot make")
			}
		}()
		judge(t, c)
	})
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", r) {
			return false
		}
	}
	return true
}
