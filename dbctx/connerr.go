package dbctx

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Connect errors: an outage or a misconfiguration?
//
// An outage passes by itself: the server is down or restarting, refuses
// connections for now (57P03 starting up, 53300 too many connections),
// the network resets or times out. The caller should come back later
// (ErrUnavailable: 503 with Retry-After, close 1013). A misconfiguration
// does not pass by itself: the database or the role does not exist, the
// password is wrong, the host name does not resolve, TLS or
// authentication fails, the connection string does not parse. Retrying
// will not help and an operator must act (ErrMisconfigured: logged at
// ERROR, 500, close 1011). Where the server said nothing, the probe of
// probe.go may tell.

// connectError wraps err, an error of db.Conn, in ErrMisconfigured or
// ErrUnavailable where it is pgx's error connecting, counts it and logs
// it: a misconfiguration once per cause (until a connection succeeds
// again), an outage through the pool's aggregated warnings. An error that
// came because ctx ended is returned as it is: the caller gave up, the
// database did nothing wrong. So is one that came as ctx's deadline passed
// (the dial or the handshake was given that deadline, and timed out),
// which ctx itself may not have noticed yet: it wraps
// context.DeadlineExceeded then.
func (p *Pool) connectError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	}
	var ce *pgconn.ConnectError
	var pe *pgconn.ParseConfigError
	switch {
	case errors.Is(err, errConnectTimeout) && p.dbFull():
		// No connect was tried: the pool's scopes hold every connection
		// the *sql.DB allows (its MaxOpenConns below MaxWorkers), and none
		// came free. The pool is busy; the database is well.
		p.c.busy.Add(1)
		p.opts.Logger.Warn(msgDBFull, "max_open_conns", p.db.Stats().MaxOpenConnections, "max_workers", p.opts.MaxWorkers)
		return fmt.Errorf("%w: every connection the *sql.DB allows (MaxOpenConns) in use: %w", ErrBusy, err)
	case errors.Is(err, errConnectTimeout):
		// Nothing said what is wrong before ConnectTimeout: taken for an
		// outage (a host that does not answer).
	case errors.As(err, &pe):
		p.misconfigured(pe, err)
		return fmt.Errorf("%w: %w", ErrMisconfigured, err)
	case !errors.As(err, &ce):
		return err // not pgx's, or not connecting
	}
	if ce != nil { // nil: ConnectTimeout's
		if cause := misconfiguration(ce); cause != nil {
			p.misconfigured(cause, err)
			return fmt.Errorf("%w: %w", ErrMisconfigured, err)
		}
	}
	if cause := p.probed(err); cause != nil { // see probe.go
		p.misconfigured(cause, err)
		return fmt.Errorf("%w: %w: %w", ErrMisconfigured, cause, err)
	}
	p.c.unavailable.Add(1)
	p.opts.Logger.Warn(msgUnavailable, "err", err)
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// msgDBFull is the warning of a unit of work that found every connection
// the *sql.DB allows in use, one per such unit: the pool's logger
// aggregates it (see logging.go).
const msgDBFull = "dbctx: the *sql.DB's connections are all in use (MaxOpenConns); raise it to MaxWorkers at least, and count what else takes them (Pool.DB)"

// dbFull reports whether the pool's scopes hold every connection the
// *sql.DB allows. (The *sql.DB's own count of those in use would not do:
// it counts a connect under way, stalled by an outage, as one.)
func (p *Pool) dbFull() bool {
	max := p.db.Stats().MaxOpenConnections
	return max > 0 && int(p.c.pinned.Load()) >= max
}

// msgUnavailable is the warning of a connect that failed on an outage,
// one per failed connect: the pool's logger aggregates it (see
// logging.go).
const msgUnavailable = "dbctx: database unavailable"

// errConnectTimeout is a connect that Options.ConnectTimeout ended.
var errConnectTimeout = errors.New("dbctx: no connection within ConnectTimeout")

// misconfiguration returns the error in ce's tree that says the
// configuration is wrong, or nil where none does. With several hosts or
// TLS modes tried, one such error is enough: an operator must act on it
// even if another host was merely down.
func misconfiguration(ce *pgconn.ConnectError) error {
	// Under sslmode=prefer or allow a refusal of TLS is not an error:
	// the plain attempt's own error says what happened.
	tlsOnly := ce.Config != nil && ce.Config.TLSConfig != nil
	if ce.Config != nil {
		for _, fb := range ce.Config.Fallbacks {
			tlsOnly = tlsOnly && fb.TLSConfig != nil
		}
	}
	var found error
	walkErrors(ce.Unwrap(), func(e error) bool {
		if isMisconfiguration(e, tlsOnly) {
			found = e
		}
		return found == nil
	})
	return found
}

// walkErrors calls f for err and every error it wraps, depth first, until
// f returns false.
func walkErrors(err error, f func(error) bool) bool {
	if err == nil {
		return true
	}
	if !f(err) {
		return false
	}
	switch u := err.(type) {
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if !walkErrors(e, f) {
				return false
			}
		}
	case interface{ Unwrap() error }:
		return walkErrors(u.Unwrap(), f)
	}
	return true
}

// misconfiguredClasses are the SQLSTATE classes of a server's refusal
// at connect that no retry fixes: 28 (role does not exist, wrong password,
// no pg_hba.conf entry), 3D (database does not exist), 42 (no CONNECT
// privilege, unknown startup parameter), 22 (a startup parameter's value
// refused). Others (57P03 starting up, 53300 too many connections, 57P01
// shutting down, 08…) are outages.
var misconfiguredClasses = []string{"28", "3D", "42", "22"}

// misconfiguredCodes are single SQLSTATEs of a refusal at connect that no
// retry fixes: 55000, the database does not allow connections
// (datallowconn false, template0); 55P02, a startup parameter the server
// takes from its own configuration only, or never (max_connections,
// server_version in the connection string), as lasting a refusal as an
// unknown parameter's (class 42).
var misconfiguredCodes = []string{"55000", "55P02"}

// poolerRefusals are the refusals of PgBouncer at connect that no retry
// fixes: it says them with 08P01, the code of its every refusal, outages
// too ("pgbouncer cannot connect to server", "server login has been
// failing, try again later"), so they are told by their message (its
// start, and where it names a database or role, its end): PgBouncer's
// own (a role or database it does not know, the password its auth_file
// or auth_query refuses, by SCRAM too, a startup parameter it does not pass on, such
// as search_path outside ignore_startup_parameters), and PostgreSQL's
// refusals of the server login PgBouncer made for the client, which it
// passes on with their text under 08P01 (a database its "*" entry sent
// on that does not exist, a role PostgreSQL refuses). PostgreSQL's are
// read in English only: under another lc_messages they stay outages.
var poolerRefusals = []struct{ prefix, suffix string }{
	{"no such user", ""},
	{"no such database", ""},
	{"password authentication failed", ""},
	{"SASL authentication failed", ""}, // auth_type scram-sha-256's, a role it does not know too
	{"unsupported startup parameter", ""},
	{"no pg_hba.conf entry for", ""},
	{"permission denied for database", ""},
	{`database "`, `" does not exist`},
	{`database "`, `" is not currently accepting connections`},
	{`role "`, `" does not exist`},
	{`role "`, `" is not permitted to log in`},
}

// poolerRefusal reports whether msg, the message of an 08P01 at connect,
// is one of poolerRefusals.
func poolerRefusal(msg string) bool {
	for _, r := range poolerRefusals {
		if strings.HasPrefix(msg, r.prefix) && strings.HasSuffix(msg, r.suffix) && len(msg) >= len(r.prefix)+len(r.suffix) {
			return true
		}
	}
	return false
}

// clientRefusals are the steps of pgconn's connect that fail, where the
// network did not, on what the client was configured to demand or
// present (their errors carry no type of their own, only this prefix).
var clientRefusals = []string{
	"failed SASL auth", "failed GSS auth", "require_auth check failed", "channel binding check failed",
	"sslcertmode check failed", "invalid sslcertmode", "invalid require_auth",
	"invalid max_protocol_version", "invalid min_protocol_version", "server protocol version too low",
}

// isMisconfiguration reports whether e, one error of a failed connect's
// tree, is a misconfiguration; tlsOnly says that no plain connection was
// to be tried.
func isMisconfiguration(e error, tlsOnly bool) bool {
	var (
		pgErr  *pgconn.PgError
		dnsErr *net.DNSError
		unkCA  x509.UnknownAuthorityError
		host   x509.HostnameError
		inval  x509.CertificateInvalidError
		verify *tls.CertificateVerificationError
		alert  tls.AlertError
		record tls.RecordHeaderError
		body   *pgproto3.ExceededMaxBodyLenErr
	)
	switch {
	case errors.As(e, &body), strings.HasPrefix(e.Error(), "unknown message type:"):
		// What answered does not speak PostgreSQL's protocol: another
		// service at the address (an HTTP server, a Redis…).
		return true
	case errors.As(e, &pgErr):
		for _, c := range misconfiguredClasses {
			if strings.HasPrefix(pgErr.Code, c) {
				return true
			}
		}
		if pgErr.Code == "08P01" && poolerRefusal(pgErr.Message) {
			return true
		}
		return slices.Contains(misconfiguredCodes, pgErr.Code)
	case errors.As(e, &dnsErr):
		return dnsErr.IsNotFound
	case errors.As(e, &unkCA), errors.As(e, &host), errors.As(e, &inval), errors.As(e, &verify),
		errors.As(e, &alert), errors.As(e, &record):
		return true
	case tlsOnly && e.Error() == "server refused TLS connection":
		return true
	}
	msg := e.Error()
	for _, r := range clientRefusals {
		if strings.HasPrefix(msg, r) {
			var ne net.Error
			return !errors.As(e, &ne) // the network failed mid-step: an outage
		}
	}
	return false
}

// maxMisconfigCauses bounds the causes a pool remembers having logged;
// past it, further causes are counted but not logged until a connection
// succeeds.
const maxMisconfigCauses = 32

// misconfigLog remembers the causes of misconfiguration already logged.
type misconfigLog struct {
	mu     sync.Mutex
	logged map[string]bool // by the cause's text
}

// misconfigured counts a connect that failed on cause (err is the whole
// error) and logs it at ERROR, once per cause until a connection
// succeeds.
func (p *Pool) misconfigured(cause, err error) {
	p.c.misconfigured.Add(1)
	p.logMisconfigured(cause, err)
}

// logMisconfigured logs err, a failed connect whose cause is a
// misconfiguration, at ERROR, once per cause until a connection succeeds.
func (p *Pool) logMisconfigured(cause, err error) {
	m := &p.misconfig
	key := cause.Error()
	m.mu.Lock()
	first := !m.logged[key] && len(m.logged) < maxMisconfigCauses
	if first {
		if m.logged == nil {
			m.logged = map[string]bool{}
		}
		m.logged[key] = true
		p.c.misconfigSeen.Store(true)
	}
	m.mu.Unlock()
	if first {
		p.opts.Logger.Error("dbctx: cannot connect: misconfiguration; every connect fails until it is fixed (logged once per cause)",
			"err", err)
	}
}

// connected forgets the causes of misconfiguration logged, and what the
// probe found: a connection succeeded, so the next failure is news again.
// It costs one atomic load while none was seen.
func (p *Pool) connected() {
	if !p.c.misconfigSeen.Load() {
		return
	}
	p.probe.forget()
	m := &p.misconfig
	m.mu.Lock()
	clear(m.logged)
	p.c.misconfigSeen.Store(false)
	m.mu.Unlock()
}
