package dbctx

import (
	"context"
	"time"
)

// IsAsync reports whether ctx was marked with Async and is not inside a
// Do that runs on a scope of its own.
func IsAsync(ctx context.Context) bool {
	s := From(ctx)
	return s != nil && s.async
}

// WatchFired reports whether the scope has seen its own context end (see
// cancel.go), so tests can wait for it rather than race it.
func (s *Scope) WatchFired() bool {
	s.imu.Lock()
	defer s.imu.Unlock()
	return s.canceled
}

// SetRecent sets how long after a give-back the socket check is skipped
// (see Pool.check): 0 looks every time, a long one never after a
// give-back.
func (p *Pool) SetRecent(d time.Duration) { p.recent = d }

// SetKeepFor sets how long after database/sql handed a connection out
// the keep holds it at most (see keep.go).
func (p *Pool) SetKeepFor(d time.Duration) { p.keepFor = d }

// SetKeepIdle sets how long a connection given back is kept for the next
// scope before it goes back to the *sql.DB (see keep.go); 0 keeps none.
// What has been kept d or longer goes back at once.
func (p *Pool) SetKeepIdle(d time.Duration) {
	p.kept.mu.Lock()
	p.keepIdle = d
	p.kept.mu.Unlock()
	p.sweep()
}

// SetLogInterval sets how long the repeats of a recurring warning are
// counted before one record reports them (see logging.go).
func (p *Pool) SetLogInterval(d time.Duration) {
	p.bursts.mu.Lock()
	p.bursts.interval = d
	p.bursts.mu.Unlock()
}

// Bursts returns how many recurring warnings have an interval under way
// (see logging.go).
func (p *Pool) Bursts() int {
	p.bursts.mu.Lock()
	defer p.bursts.mu.Unlock()
	return len(p.bursts.open)
}

// Pace returns the pace at which slots went to queued callers lately (see
// slots.go); 0 while unknown.
func (p *Pool) Pace() time.Duration {
	p.slots.mu.Lock()
	defer p.slots.mu.Unlock()
	return p.slots.pace
}

// TxControlOf is txControlOf's answer, as a word.
func TxControlOf(query string) string {
	return [...]string{txUnread: "unread", txNone: "none", txOpen: "open", txClosed: "closed"}[txControlOf(query)]
}

// EndsBefore is endsBefore.
func EndsBefore(query string, last bool) bool { return endsBefore(query, last) }

// Queued returns the number of callers in the slot queue itself (Stats'
// Waiting counts a caller a moment before it takes its place there).
func (p *Pool) Queued() int {
	q := &p.slots
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.waiters)
}

// StartupSearchPaths is startupSearchPaths.
var StartupSearchPaths = startupSearchPaths

// ProbesDone returns how many probes of an address (see probe.go) have
// ended.
func (p *Pool) ProbesDone() int64 {
	p.probe.mu.Lock()
	defer p.probe.mu.Unlock()
	return p.probe.done
}

// IsMisconfiguration is isMisconfiguration.
var IsMisconfiguration = isMisconfiguration

// SetProbeEvery sets how often at most the pool probes an address, and
// tries a connect for real after the probe found another service there
// (probeEvery). Call it before the pool's first connect.
func (p *Pool) SetProbeEvery(d time.Duration) { p.probe.every = d }

// SetProbeWait sets how long each step of a probe waits (probeWait). Call
// it before the pool's first connect.
func (p *Pool) SetProbeWait(d time.Duration) { p.probe.wait = d }
