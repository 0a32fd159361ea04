package dbctx

import (
	"context"
	"sync"
	"time"
)

// Connections kept between scopes.
//
// A scope that gives a connection back hands it to the pool's keep rather
// than to the *sql.DB, and the next scope to pin takes it from there:
// under load, nearly every pin. That skips database/sql's check-out and
// give-back (its pool lock, the *sql.Conn, the session reset hook, the
// Raw call that finds the pgx connection). The connection goes through
// the same health check as one from the *sql.DB, and carries what its
// last user left owed (a reset, settings to clear): the next user pays it
// in its first round trip.
//
// The keep holds a connection at most keepIdle after its give-back, and
// at most keepFor after database/sql handed it out; past either it goes
// back to the *sql.DB, cleaned first, off the path of any request. So
// code that uses the *sql.DB directly waits at most keepIdle for a
// connection the keep holds, and database/sql's own limits
// (SetConnMaxLifetime, SetConnMaxIdleTime, the driver's session reset)
// apply to every connection at least every keepFor. A kept connection
// counts as in use in the *sql.DB's Stats and as Kept in the pool's.

const (
	keepIdle = recentlyReleased
	keepFor  = 500 * time.Millisecond
)

type keepList struct {
	mu     sync.Mutex
	conns  []*session // oldest give-back first
	timer  headTimer  // runs sweep
	closed bool
}

// keep takes a connection a scope has just given back (at c.released);
// false means the caller gives it to the *sql.DB. A connection of another
// driver is never kept: its health is what database/sql's check-out looks
// at (ResetSession, Validator). Nor is one due back (keepFor).
func (p *Pool) keep(c *session) bool {
	if c.pc == nil || c.released-c.pin.taken >= p.keepFor {
		return false
	}
	kp := &p.kept
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if kp.closed || p.keepIdle <= 0 || len(kp.conns) >= p.opts.MaxWorkers {
		return false
	}
	kp.conns = append(kp.conns, c)
	if !kp.timer.armed {
		kp.timer.set(p.keepIdle)
	}
	return true
}

// takeKept returns a kept connection that passes the health check, or ok
// false when the keep has none: the one given back last among those that
// owe no reset and carry the settings want, else the one given back last
// (see unkeep). One kept past keepFor goes back to the *sql.DB; a dead
// one is discarded (and counted in pn, if not nil).
func (p *Pool) takeKept(pn *Pin, want []setting) (c *session, looked, ok bool) {
	for {
		if c = p.unkeep(want); c == nil {
			return nil, false, false
		}
		now := monotonic()
		if now-c.pin.taken >= p.keepFor {
			p.giveToDB(c)
			continue
		}
		var err error
		if looked, err = p.check(c, now); err == nil {
			c.pin = pin{conn: c.pin.conn, taken: c.pin.taken}
			if pn != nil {
				pn.Kept = true
			}
			return c, looked, true
		}
		p.discard(c.pin.conn, discardDead)
		p.sawDeath()
		pn.sawDead()
	}
}

// unkeep takes a kept connection, or returns nil. It prefers, newest
// first, one whose session carries the settings want already and owes no
// reset that clears them: the scope's statements then need no set_config
// (and, but for DISCARD SEQUENCES after writes under Options.PlainWrites,
// no reset) in their round trip. Many tenants over a few connections find
// their own under load this way. Otherwise it takes one whose settings
// are worth least to the scopes to come (see victim). The keep stays in
// give-back order (sweep relies on it).
func (p *Pool) unkeep(want []setting) *session {
	kp := &p.kept
	kp.mu.Lock()
	defer kp.mu.Unlock()
	n := len(kp.conns)
	if n == 0 {
		return nil
	}
	i := kp.carrying(want)
	if i < 0 {
		i = kp.victim()
	}
	c := kp.conns[i]
	copy(kp.conns[i:], kp.conns[i+1:])
	kp.conns[n-1] = nil
	kp.conns = kp.conns[:n-1]
	return c
}

// carries reports whether c's session carries the settings want, with no
// reset owed to clear them (DISCARD SEQUENCES, all that writes owe under
// Options.PlainWrites, leaves them).
func (c *session) carries(want []setting) bool {
	return (!c.resetDue || c.seqOnly) && sameSettings(c.applied, want)
}

// carrying returns the index of the newest kept connection that carries
// the settings want, or -1. Under kp.mu.
func (kp *keepList) carrying(want []setting) int {
	for j := len(kp.conns) - 1; j >= 0; j-- {
		if kp.conns[j].carries(want) {
			return j
		}
	}
	return -1
}

// victimScan bounds how many of the newest kept connections victim looks
// at, and compares with each other.
const victimScan = 8

// victim returns the index of the kept connection a scope whose settings
// none carries takes: the newest whose settings are lost anyway (a reset
// owed clears them), whose session carries none, or whose settings
// another kept connection carries too, so that no tenant loses the only
// connection that carries it; else the newest. Under kp.mu.
func (kp *keepList) victim() int {
	n := len(kp.conns)
	lo := max(0, n-victimScan)
	for j := n - 1; j >= lo; j-- {
		c := kp.conns[j]
		if c.resetDue && !c.seqOnly || len(c.applied) == 0 {
			return j
		}
		for k := n - 1; k >= lo; k-- {
			if k != j && kp.conns[k].carries(c.applied) {
				return j
			}
		}
	}
	return n - 1
}

// sweep gives the connections kept p.keepIdle or longer back to the *sql.DB.
func (p *Pool) sweep() {
	now := monotonic()
	kp := &p.kept
	kp.mu.Lock()
	kp.timer.armed = false
	i := 0
	for i < len(kp.conns) && now-kp.conns[i].released >= p.keepIdle {
		i++
	}
	old := make([]*session, i)
	copy(old, kp.conns)
	n := copy(kp.conns, kp.conns[i:])
	clear(kp.conns[n:])
	kp.conns = kp.conns[:n]
	if n > 0 && !kp.closed {
		kp.timer.set(p.keepIdle - (now - kp.conns[0].released))
	}
	if len(old) == 0 {
		kp.mu.Unlock()
		return
	}
	if !kp.closed {
		p.cleaning.Add(1) // Close waits for this sweep's give-backs too
		defer p.cleaning.Done()
	}
	kp.mu.Unlock()
	for _, c := range old {
		p.giveToDB(c)
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
	for _, c := range old {
		p.giveToDB(c)
	}
}

// keptNow counts the connections kept now, for Stats.
func (p *Pool) keptNow() int {
	p.kept.mu.Lock()
	defer p.kept.mu.Unlock()
	return len(p.kept.conns)
}

// giveToDB gives a connection back to the *sql.DB, after what its last
// user left owed: the reset and the settings dbscope applied are undone
// first, on a goroutine of their own, so that no other user of the
// *sql.DB sees them and no request waits for it.
func (p *Pool) giveToDB(c *session) {
	if !c.resetDue && len(c.applied) == 0 {
		c.pin.conn.Close()
		return
	}
	// Once Close has begun (kept.closed), Close waits on p.cleaning: the
	// cleanup then runs here, so that none runs after Close returned.
	kp := &p.kept
	kp.mu.Lock()
	late := kp.closed
	if !late {
		p.cleaning.Add(1)
	}
	kp.mu.Unlock()
	if late {
		p.cleanAndClose(c)
		return
	}
	go func() {
		defer p.cleaning.Done()
		p.cleanAndClose(c)
	}()
}

// cleanAndClose runs c's owed cleanup and gives it to the *sql.DB, or
// discards it when the cleanup fails.
func (p *Pool) cleanAndClose(c *session) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	if err := p.clean(ctx, c); err != nil {
		if c.pc != nil && c.pc.IsClosed() {
			// It died while kept: nothing to clean, nothing to say.
			p.discard(c.pin.conn, discardDead)
			return
		}
		p.discard(c.pin.conn, discardReset)
		p.logCleanup(msgCleaning, err)
		return
	}
	c.pin.conn.Close()
}

const msgCleaning = "dbctx: cleaning a connection before giving it back"

// clean runs what c's last user left owed, alone: the reset (which clears
// settings too), or the clearing of the settings dbscope applied.
func (p *Pool) clean(ctx context.Context, c *session) error {
	pre := &prefix{reset: c.resetDue, sweep: c.resetDue && c.sweepDue, seqOnly: c.resetDue && c.seqOnly, checkApart: c.apart}
	if !c.resetDue || c.seqOnly {
		pre.set = roleAround(withResets(nil, c.applied), nil)
	}
	var err error
	if c.px == nil {
		_, err = p.runOther(ctx, c.pin.conn, pre)
	} else {
		err = withLock(c.pin.conn, func() error {
			_, err := p.runTraced(ctx, c, pre)
			return err
		})
	}
	if err != nil {
		return err
	}
	if pre.reset {
		p.resetDone(c, pre.seqOnly)
	}
	c.applied = nil
	return nil
}
