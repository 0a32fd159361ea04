package pgserver

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// isURL reports whether dsn is in URL form rather than keyword/value form.
func isURL(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// WithParams returns dsn with each key set to its value, replacing any value
// it already had. dsn may be a postgres:// URL or a keyword/value string; the
// result has the same form. pgx sends keys it does not know itself (such as
// search_path) to the server as run-time parameters.
func WithParams(dsn string, kv ...string) (string, error) {
	if len(kv)%2 != 0 {
		panic("pgserver: withParams needs key/value pairs")
	}
	if isURL(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("pgserver: parse connection URL: %w", err)
		}
		q := u.Query()
		for i := 0; i < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	var b strings.Builder
	b.WriteString(strings.TrimSpace(dsn))
	for i := 0; i < len(kv); i += 2 {
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(kv[i])
		b.WriteByte('=')
		b.WriteString(quoteValue(kv[i+1]))
	}
	return b.String(), nil
}

// WithTCPAddr returns dsn changed to connect to the TCP address addr
// ("host:port") instead of whatever host, port or unix socket it named.
func WithTCPAddr(dsn, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("pgserver: address %q: %w", addr, err)
	}
	if isURL(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("pgserver: parse connection URL: %w", err)
		}
		u.Host = net.JoinHostPort(host, port)
		q := u.Query()
		q.Del("host")
		q.Del("hostaddr")
		q.Del("port")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// In keyword/value form a later keyword overrides an earlier one.
	return WithParams(dsn, "host", host, "port", port)
}

// quoteValue quotes v for a keyword/value connection string when needed.
func quoteValue(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\\'") {
		return v
	}
	v = strings.ReplaceAll(v, `\`, `\\`)
	v = strings.ReplaceAll(v, `'`, `\'`)
	return "'" + v + "'"
}

// WithUser returns dsn changed to log in as user with password.
func WithUser(dsn, user, password string) (string, error) {
	if isURL(dsn) {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("pgserver: parse connection URL: %w", err)
		}
		u.User = url.UserPassword(user, password)
		q := u.Query()
		q.Del("user")
		q.Del("password")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	return WithParams(dsn, "user", user, "password", password)
}
