package groups

// Running reports whether the member's goroutine runs.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.drain
}

// Sweeping reports whether the layer's sweep runs.
func (l *Layer) Sweeping() bool {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	return l.sweeping
}
