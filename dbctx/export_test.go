package dbctx

import "time"

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
