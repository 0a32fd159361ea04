package groups

// Running reports whether the member's goroutine runs.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.drain
}

// QueueCap returns the capacity of the member's queue's array.
func (m *Member) QueueCap() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return cap(m.queue)
}

// Sweeping reports whether the layer's sweep runs.
func (l *Layer) Sweeping() bool {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	return l.sweeping
}

// Queued returns how many commands wait for the listener.
func (e *Postgres) Queued() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.pending)
}

// ChannelOf returns the NOTIFY channel of group.
func (e *Postgres) ChannelOf(group string) string { return e.channelOf(group) }

// SetDirectSQL replaces the query of the listener's check that it reaches
// a primary straight (its backend's pid, pg_is_in_recovery()), before
// Start: a test plays a standby with it.
func (e *Postgres) SetDirectSQL(q string) { e.directSQL = q }

// SetCleanupBatch sets how many rows one statement of the payload table's
// cleanup deletes at most (cleanupBatch). Call it before Start.
func (e *Postgres) SetCleanupBatch(n int) {
	e.table.perDelete = n
	e.table.statements(e.table.quoted)
}
