package wsconsumer

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"path"
	"strings"

	"github.com/coder/websocket"
)

// The upgrade is verified before any callback runs or any slot is taken:
// a cross-site page must not make a victim's browser run Connect with the
// victim's cookies, and a plain GET (an <img src>) must not run Connect
// and Disconnect and take a worker slot twice. verifyUpgrade judges a
// request as websocket.Accept (coder/websocket v1.8.15, accept.go:
// verifyClientRequest, authenticateOrigin, hijacker) does, check for
// check and in the same order, and answers a failure as Accept would:
// the same status, headers and body. TestVerifyUpgradeAsAccept holds the
// two side by side; FuzzVerifyUpgrade looks for a request they judge
// apart.

// upgradeError is a request that Accept would refuse, with the status it
// would answer.
type upgradeError struct {
	status int
	err    error
}

func (e *upgradeError) Error() string { return e.err.Error() }

// verifyUpgrade returns nil if websocket.Accept would accept r with opts,
// else the status and error Accept would answer with, having set on w
// the headers Accept would set.
func verifyUpgrade(w http.ResponseWriter, r *http.Request, opts *websocket.AcceptOptions) *upgradeError {
	if code, err := verifyClientRequest(w, r); err != nil {
		return &upgradeError{code, err}
	}
	if opts == nil || !opts.InsecureSkipVerify {
		var patterns []string
		if opts != nil {
			patterns = opts.OriginPatterns
		}
		if err := authenticateOrigin(r, patterns); err != nil {
			if errors.Is(err, path.ErrBadPattern) {
				err = errors.New(http.StatusText(http.StatusForbidden))
			}
			return &upgradeError{http.StatusForbidden, err}
		}
	}
	if !canHijack(w) {
		return &upgradeError{http.StatusNotImplemented, errors.New("http.ResponseWriter does not implement http.Hijacker")}
	}
	return nil
}

// answer writes the response Accept writes for e.
func (e *upgradeError) answer(w http.ResponseWriter) {
	body := e.err.Error()
	if e.status == http.StatusNotImplemented {
		body = http.StatusText(e.status)
	}
	http.Error(w, body, e.status)
}

// verifyClientRequest is coder/websocket's, which Accept runs first.
func verifyClientRequest(w http.ResponseWriter, r *http.Request) (errCode int, _ error) {
	if !r.ProtoAtLeast(1, 1) {
		return http.StatusUpgradeRequired, fmt.Errorf("WebSocket protocol violation: handshake request must be at least HTTP/1.1: %q", r.Proto)
	}
	if !headerContainsTokenIgnoreCase(r.Header, "Connection", "Upgrade") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return http.StatusUpgradeRequired, fmt.Errorf("WebSocket protocol violation: Connection header %q does not contain Upgrade", r.Header.Get("Connection"))
	}
	if !headerContainsTokenIgnoreCase(r.Header, "Upgrade", "websocket") {
		w.Header().Set("Connection", "Upgrade")
		w.Header().Set("Upgrade", "websocket")
		return http.StatusUpgradeRequired, fmt.Errorf("WebSocket protocol violation: Upgrade header %q does not contain websocket", r.Header.Get("Upgrade"))
	}
	if r.Method != "GET" {
		return http.StatusMethodNotAllowed, fmt.Errorf("WebSocket protocol violation: handshake request method is not GET but %q", r.Method)
	}
	if r.Header.Get("Sec-WebSocket-Version") != "13" {
		w.Header().Set("Sec-WebSocket-Version", "13")
		return http.StatusBadRequest, fmt.Errorf("unsupported WebSocket protocol version (only 13 is supported): %q", r.Header.Get("Sec-WebSocket-Version"))
	}
	keys := r.Header.Values("Sec-WebSocket-Key")
	if len(keys) == 0 {
		return http.StatusBadRequest, errors.New("WebSocket protocol violation: missing Sec-WebSocket-Key")
	}
	if len(keys) > 1 {
		return http.StatusBadRequest, errors.New("WebSocket protocol violation: multiple Sec-WebSocket-Key headers")
	}
	key := strings.TrimSpace(keys[0])
	if v, err := base64.StdEncoding.DecodeString(key); err != nil || len(v) != 16 {
		return http.StatusBadRequest, fmt.Errorf("WebSocket protocol violation: invalid Sec-WebSocket-Key %q, must be a 16 byte base64 encoded string", key)
	}
	return 0, nil
}

// authenticateOrigin is coder/websocket's: no Origin, or the request's
// own host, or a host (scheme://host where the pattern has a scheme)
// matching one of the patterns, case insensitively with path.Match.
func authenticateOrigin(r *http.Request, patterns []string) error {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil {
		return fmt.Errorf("failed to parse Origin header %q: %w", origin, err)
	}
	if strings.EqualFold(r.Host, u.Host) {
		return nil
	}
	for _, p := range patterns {
		target := u.Host
		if strings.Contains(p, "://") {
			target = u.Scheme + "://" + u.Host
		}
		matched, err := path.Match(strings.ToLower(p), strings.ToLower(target))
		if err != nil {
			return fmt.Errorf("failed to parse path pattern %q: %w", p, err)
		}
		if matched {
			return nil
		}
	}
	if u.Host == "" {
		return fmt.Errorf("request Origin %q is not a valid URL with a host", origin)
	}
	return fmt.Errorf("request Origin %q is not authorized for Host %q", u.Host, r.Host)
}

// canHijack reports whether w, or one it wraps (Unwrap), is an
// http.Hijacker, as Accept looks for one.
func canHijack(w http.ResponseWriter) bool {
	for {
		switch t := w.(type) {
		case http.Hijacker:
			return true
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return false
		}
	}
}

func headerContainsTokenIgnoreCase(h http.Header, key, token string) bool {
	for _, t := range headerTokens(h, key) {
		if strings.EqualFold(t, token) {
			return true
		}
	}
	return false
}

func headerTokens(h http.Header, key string) []string {
	key = textproto.CanonicalMIMEHeaderKey(key)
	var tokens []string
	for _, v := range h[key] {
		v = strings.TrimSpace(v)
		for _, t := range strings.Split(v, ",") {
			tokens = append(tokens, strings.TrimSpace(t))
		}
	}
	return tokens
}

// checkOriginPatterns panics on a pattern path.Match refuses: Accept
// would refuse every cross-origin request with 403 then (and log it with
// the standard logger).
func checkOriginPatterns(opts *websocket.AcceptOptions) {
	if opts == nil {
		return
	}
	for _, p := range opts.OriginPatterns {
		if _, err := path.Match(strings.ToLower(p), ""); err != nil {
			panic(fmt.Sprintf("wsconsumer: Options.Accept.OriginPatterns: %q: %v", p, err))
		}
	}
}
