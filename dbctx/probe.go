package dbctx

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// What answers at the address, where a connect failed without a word?
//
// A connect that ends because the server closed the connection (EOF, a
// reset) or said nothing before ConnectTimeout tells nothing of what is
// at the address: PostgreSQL restarting, a proxy whose backend is down,
// or another service. An HTTPS server closes on PostgreSQL's first
// bytes; an SMTP or FTP server's banner ("220 …") reads as the start of a
// message of 800 MB, awaited until the timeout. Such a failure is an
// outage, unless the pool's probe of the address finds another service
// there.
//
// The probe runs in the background, one at a time, at most once per
// probeEvery: it sends PostgreSQL's SSLRequest, to which PostgreSQL and
// PgBouncer answer with one byte, 'S', 'N' or 'E'. Any other answer is
// another service. No answer (the connection closed, or nothing within
// probeWait) leads to a TLS handshake, as a client of HTTPS would make it: a
// server that completes it without PostgreSQL's SSLRequest (PostgreSQL
// 17's direct TLS demands the ALPN protocol "postgresql", not offered
// here) is a TLS service, and a server that answers it with other bytes
// is another service too. Otherwise nothing is known and the failure
// stays an outage.
//
// Where the probe finds another service, it logs at ERROR what answered,
// as a misconfiguration, and every later connect to that address that
// fails is ErrMisconfigured, until a connect succeeds. The unit whose
// failure started the probe got ErrUnavailable. Such a service rarely
// answers what PostgreSQL's client sends (an HTTP server waits for a
// line that never comes), so each connect would wait for ConnectTimeout,
// holding its slot, and a burst would meet ErrBusy rather than the
// misconfiguration: from the probe's finding on, units of work get
// ErrMisconfigured at once, without a connect, but for one connect tried
// for real once per probeEvery (its success ends it), while the *sql.DB
// holds no idle connection; and meanwhile, once a second at most while
// units are refused so, an SSLRequest asks the address again, in the
// background, so that PostgreSQL answering there again ends it at once.

// probeEvery is how often at most a pool probes an address.
const probeEvery = 30 * time.Second

// period is probeEvery, or what a test set.
func (pr *probes) period() time.Duration {
	if pr.every > 0 {
		return pr.every
	}
	return probeEvery
}

// probeWait bounds each step of the probe: the dial, then the answer,
// then the TLS handshake. The probe runs in the background, so a long
// bound costs no unit of work; a short one made a loaded machine's TLS
// handshake (an HTTPS server at the address) read as no answer, and the
// misconfiguration as an outage.
const probeWait = 5 * time.Second

// waitFor is probeWait, or what a test set.
func (pr *probes) waitFor() time.Duration {
	if pr.wait > 0 {
		return pr.wait
	}
	return probeWait
}

// probes is a pool's state of the probe.
type probes struct {
	mu      sync.Mutex
	running bool
	next    time.Time         // no probe before
	found   map[string]string // address → what answers there, not PostgreSQL
	refuse  atomic.Bool       // cause is set: see refused
	cause   error             // the latest of found, as refused returns it
	until   time.Time         // refused fails at once before, then lets one connect through
	every   time.Duration     // probeEvery; tests shorten it
	wait    time.Duration     // probeWait; tests lengthen it
	addr    string            // the address of cause
	recheck time.Time         // no recheck of addr before (see refused)
	checks  bool              // a recheck runs
	wg      sync.WaitGroup
	done    int64 // probes ended, for tests
}

// notPostgresError is the cause of a misconfiguration the probe found.
type notPostgresError struct {
	addr, what string
}

func (e *notPostgresError) Error() string {
	return "not PostgreSQL at " + e.addr + ": " + e.what
}

// probed returns the cause where the probe found another service at the
// address err's connect went to, else nil; where err says nothing of
// what answered and no probe runs or ran lately, it starts one.
func (p *Pool) probed(err error) error {
	addr := probeAddr(err)
	if addr == "" {
		return nil
	}
	pr := &p.probe
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if what, ok := pr.found[addr]; ok {
		return &notPostgresError{addr: addr, what: what}
	}
	now := time.Now()
	if p.closing.Err() != nil || pr.running || now.Before(pr.next) || !saidNothing(err) {
		return nil
	}
	pr.running, pr.next = true, now.Add(pr.period())
	pr.wg.Add(1)
	go p.runProbe(p.closing, addr, err)
	return nil
}

// runProbe probes addr; err is the connect failure that started it.
func (p *Pool) runProbe(ctx context.Context, addr string, err error) {
	pr := &p.probe
	defer pr.wg.Done()
	what := probeAnswer(ctx, addr, pr.waitFor())
	pr.mu.Lock()
	pr.running = false
	pr.done++
	if what != "" && ctx.Err() == nil {
		if pr.found == nil {
			pr.found = map[string]string{}
		}
		pr.found[addr] = what
		pr.cause, pr.addr = &notPostgresError{addr: addr, what: what}, addr
		pr.until = time.Now().Add(pr.period())
		pr.recheck = time.Now().Add(recheckEvery)
		pr.refuse.Store(true)
	}
	pr.mu.Unlock()
	if what != "" {
		cause := &notPostgresError{addr: addr, what: what}
		p.logMisconfigured(cause, fmt.Errorf("%w; the connect: %w", cause, err))
	}
}

// forget drops what the probe found: a connect succeeded.
func (pr *probes) forget() {
	pr.mu.Lock()
	pr.forgetLocked()
	pr.mu.Unlock()
}

// forgetLocked is forget, under pr.mu.
func (pr *probes) forgetLocked() {
	clear(pr.found)
	pr.cause = nil
	pr.refuse.Store(false)
}

// refused returns, where the probe found another service at the pool's
// address and no connect has succeeded since, the error of a connect not
// tried: ErrMisconfigured with what the probe found. Once per probeEvery
// it returns nil, and that caller's connect is tried for real (its
// success forgets what was found); so it does while the *sql.DB holds an
// idle connection, which needs no connect. It costs one atomic load
// where nothing was found.
func (p *Pool) refused() error {
	pr := &p.probe
	if !pr.refuse.Load() || p.db.Stats().Idle > 0 {
		return nil
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.cause == nil {
		return nil
	}
	now := time.Now()
	if !now.Before(pr.until) {
		pr.until = now.Add(pr.period())
		return nil
	}
	if !pr.checks && !now.Before(pr.recheck) && p.closing.Err() == nil {
		pr.checks, pr.recheck = true, now.Add(recheckEvery)
		pr.wg.Add(1)
		go p.recheckAddr(p.closing, pr.addr)
	}
	return pr.cause
}

// recheckEvery is how often at most, while refused fails units at once,
// the address is asked again, in the background, whether PostgreSQL
// answers there now (an SSLRequest: no slot is held, no ConnectTimeout
// waited): where it does, what the probe found is forgotten, and the
// next unit connects for real, rather than a probe period later.
const recheckEvery = time.Second

// recheckAddr forgets what the probe found at addr where PostgreSQL (or
// PgBouncer) answers there now.
func (p *Pool) recheckAddr(ctx context.Context, addr string) {
	pr := &p.probe
	defer pr.wg.Done()
	back := postgresAnswers(ctx, addr, pr.waitFor())
	pr.mu.Lock()
	pr.checks = false
	if back && ctx.Err() == nil && pr.addr == addr {
		pr.forgetLocked()
	}
	pr.mu.Unlock()
}

// postgresAnswers reports whether what answers at addr answers an
// SSLRequest as PostgreSQL and PgBouncer do: with one byte, S, N or E.
func postgresAnswers(ctx context.Context, addr string, wait time.Duration) bool {
	d := net.Dialer{Timeout: wait}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var b [1]byte
	if _, err := c.Write(sslRequest); err != nil {
		return false
	}
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return false
	}
	return b[0] == 'S' || b[0] == 'N' || b[0] == 'E'
}

// stopProbe ends the pool's closing context (Close's, which ends a probe
// under way) under the probe's mu, which probed checks it under, so that
// no probe starts after, and waits for the one under way.
func (p *Pool) stopProbe() {
	pr := &p.probe
	pr.mu.Lock()
	p.closeNow()
	pr.mu.Unlock()
	pr.wg.Wait()
}

// probeAddr returns the TCP address of err's connect, where it has one
// (not a Unix socket, not several hosts).
func probeAddr(err error) string {
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) || ce.Config == nil {
		return ""
	}
	c := ce.Config
	if c.Host == "" || strings.HasPrefix(c.Host, "/") {
		return ""
	}
	for _, fb := range c.Fallbacks {
		if fb.Host != c.Host || fb.Port != c.Port {
			return ""
		}
	}
	return net.JoinHostPort(c.Host, strconv.Itoa(int(c.Port)))
}

// saidNothing reports whether err is a connect that ended without an
// answer: the connection closed or reset, or a timeout.
func saidNothing(err error) bool {
	found := false
	walkErrors(err, func(e error) bool {
		var ne net.Error
		switch {
		case e == io.EOF, e == io.ErrUnexpectedEOF, e == syscall.ECONNRESET, e == errConnectTimeout,
			e == context.DeadlineExceeded, errors.As(e, &ne) && ne.Timeout():
			found = true
		}
		return !found
	})
	return found
}

// sslRequest is PostgreSQL's SSLRequest: length 8, code 80877103.
var sslRequest = []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}

// probeAnswer says what answers at addr where it is not PostgreSQL, else
// "" (PostgreSQL, or nothing known).
func probeAnswer(ctx context.Context, addr string, wait time.Duration) string {
	d := net.Dialer{Timeout: wait}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	buf := make([]byte, 64)
	n := 0
	if _, err := c.Write(sslRequest); err == nil {
		n, _ = io.ReadAtLeast(c, buf, 1)
	}
	if n > 0 {
		switch buf[0] {
		case 'S', 'N', 'E':
			return ""
		}
		return fmt.Sprintf("it answered PostgreSQL's SSLRequest with %s", quoteStart(buf[:n]))
	}
	c.Close()

	host, _, _ := net.SplitHostPort(addr)
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return ""
	}
	defer raw.Close()
	raw.SetDeadline(time.Now().Add(wait))
	tc := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, ServerName: host})
	err = tc.HandshakeContext(ctx)
	var rh tls.RecordHeaderError
	switch {
	case err == nil:
		return "a TLS server (HTTPS?): it completed a TLS handshake without PostgreSQL's SSLRequest"
	case errors.As(err, &rh) && rh.Conn != nil && rh.RecordHeader[0] != 'E':
		// ('E': PgBouncer's error for a startup packet it cannot read.)
		return fmt.Sprintf("it answered a TLS handshake with %s", quoteStart(rh.RecordHeader[:]))
	}
	return ""
}

// quoteStart quotes the start of b for a log line.
func quoteStart(b []byte) string {
	const max = 32
	if len(b) > max {
		return strconv.Quote(string(b[:max])) + "…"
	}
	return strconv.Quote(string(b))
}
