package dbctx

// WatchFired reports whether the scope has seen its own context end (see
// cancel.go), so tests can wait for it rather than race it.
func (s *Scope) WatchFired() bool {
	s.imu.Lock()
	defer s.imu.Unlock()
	return s.canceled
}
