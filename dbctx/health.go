package dbctx

import (
	"database/sql/driver"
	"time"
)

// check is the health check run on every connection a scope pins, before
// user code sees it. database/sql and pgx ping only after a second idle, so
// a backend killed between two requests would fail the next statement;
// instead check looks at the socket without a round trip: on an idle
// connection nothing should be waiting to be read, so data or EOF there
// means the server has closed the session (pg_terminate_backend, restart).
// It returns driver.ErrBadConn for a dead connection, which makes
// database/sql close it. pc is nil for drivers other than pgx's stdlib;
// now is monotonic().
//
// A connection a scope gave back less than p.recent ago is not looked at
// (looked is false): under load that is nearly every check-out, and the
// look, a system call, costs several percent of a message's CPU. A
// backend that died in that moment is caught by the statement retry
// instead (the server's 57P message, see retryable); raw access, which is
// not retried, looks first (Scope.raw). Once a dead connection has been
// seen, every connection given back before that is looked at again: a
// round of kills (a failover, pg_terminate_backend of every backend)
// costs one retry, not one per connection.
func (p *Pool) check(c *session, now time.Duration) (looked bool, err error) {
	if c.pc == nil {
		// Another driver: database/sql's ResetSession and Validator, and
		// the statement retry, are what we have.
		return true, nil
	}
	if c.pc.IsClosed() || c.pc.TxStatus() != 'I' {
		return true, driver.ErrBadConn
	}
	if c.released > time.Duration(p.deathSeen.Load()) && now-c.released < p.recent {
		return false, nil
	}
	if c.dead() {
		return true, driver.ErrBadConn
	}
	return true, nil
}

// recentlyReleased is Pool.recent: how long after a scope gave a
// connection back the next check-out skips the socket check. Idle
// connections that a proxy or the server may close are idle for far
// longer.
const recentlyReleased = 10 * time.Millisecond
