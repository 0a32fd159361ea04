package dbctx

import (
	"database/sql"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// Connections kept between scopes.
//
// A scope that gives a clean connection back hands it to the pool's keep
// rather than to the *sql.DB, and the next scope to pin takes it from
// there: under load, nearly every pin. That skips database/sql's check-out
// and give-back (its pool lock, the *sql.Conn, the session reset hook, the
// Raw call that finds the pgx connection), about 2% of a one-query request.
// The connection goes through the same health check as one from the
// *sql.DB.
//
// The keep holds a connection at most keepIdle after its give-back, and
// at most keepFor after database/sql handed it out; past either it goes
// back to the *sql.DB. So code that uses the *sql.DB directly waits at most
// keepIdle for a connection the keep holds, and database/sql's own limits
// (SetConnMaxLifetime, SetConnMaxIdleTime, the driver's session reset)
// apply to every connection at least every keepFor. A kept connection
// counts as in use in the *sql.DB's Stats and as Kept in the pool's.

const (
	keepIdle = recentlyReleased
	keepFor  = 500 * time.Millisecond
)

// keptConn is a connection on its way between the *sql.DB, scopes and the
// keep. While kept, sock.released is when a scope gave it back.
type keptConn struct {
	conn  *sql.Conn
	pc    *pgconn.PgConn // nil for other drivers
	sock  *socket        // pc's; nil with pc
	taken time.Duration  // monotonic() when database/sql handed it out
}

type keepList struct {
	mu     sync.Mutex
	conns  []keptConn // oldest give-back first
	timer  headTimer  // runs sweep
	closed bool
}

// keep takes a connection a scope has just given back clean (at
// k.sock.released); false means the caller gives it to the *sql.DB. A
// connection of another driver is never kept: its health is what
// database/sql's check-out looks at (ResetSession, Validator). Nor is one
// due back (keepFor).
func (p *Pool) keep(k keptConn) bool {
	if k.pc == nil || k.sock.released-k.taken >= keepFor {
		return false
	}
	kp := &p.kept
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.closed || p.keepIdle <= 0 || len(kp.conns) >= p.opts.MaxWorkers {
		return false
	}
	kp.conns = append(kp.conns, k)
	if !kp.timer.armed {
		kp.timer.set(p.keepIdle)
	}
	return true
}

// takeKept returns a kept connection that passes the health check, or ok
// false when the keep has none. One kept past keepFor goes back to the
// *sql.DB; a dead one is discarded.
func (p *Pool) takeKept() (k keptConn, looked, ok bool) {
	for {
		if k, ok = p.unkeep(); !ok {
			return k, false, false
		}
		now := monotonic()
		if now-k.taken >= keepFor {
			k.conn.Close()
			continue
		}
		var err error
		if looked, err = p.check(k.pc, k.sock, now); err == nil {
			return k, looked, true
		}
		p.discard(k.conn, discardDead)
		p.sawDeath()
	}
}

// unkeep takes the connection given back last.
func (p *Pool) unkeep() (keptConn, bool) {
	kp := &p.kept
	kp.mu.Lock()
	defer kp.mu.Unlock()
	n := len(kp.conns)
	if n == 0 {
		return keptConn{}, false
	}
	k := kp.conns[n-1]
	kp.conns[n-1] = keptConn{}
	kp.conns = kp.conns[:n-1]
	return k, true
}

// sweep gives the connections kept p.keepIdle or longer back to the *sql.DB.
func (p *Pool) sweep() {
	now := monotonic()
	kp := &p.kept
	kp.mu.Lock()
	kp.timer.armed = false
	i := 0
	for i < len(kp.conns) && now-kp.conns[i].sock.released >= p.keepIdle {
		i++
	}
	old := make([]keptConn, i)
	copy(old, kp.conns)
	n := copy(kp.conns, kp.conns[i:])
	clear(kp.conns[n:])
	kp.conns = kp.conns[:n]
	if n > 0 && !kp.closed {
		kp.timer.set(p.keepIdle - (now - kp.conns[0].sock.released))
	}
	kp.mu.Unlock()
	for _, k := range old {
		k.conn.Close()
	}
}

// closeKept gives every kept connection back to the *sql.DB and keeps no
// more (Pool.Close).
func (p *Pool) closeKept() {
	kp := &p.kept
	kp.mu.Lock()
	kp.closed = true
	old := kp.conns
	kp.conns = nil
	kp.timer.stop()
	kp.mu.Unlock()
	for _, k := range old {
		k.conn.Close()
	}
}

// keptNow counts the connections kept now, for Stats.
func (p *Pool) keptNow() int {
	p.kept.mu.Lock()
	defer p.kept.mu.Unlock()
	return len(p.kept.conns)
}
