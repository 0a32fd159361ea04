package natslayer

// Stats is a snapshot of an engine's counters, beside what the layer
// counts (groups.Stats: Gaps and Reconnects come from the engine). The
// gauge is a current value; the rest count since the engine was made.
type Stats struct {
	Subscriptions int // groups subscribed to: one subscription each

	// SlowConsumers counts the times a group's subscription fell behind
	// its pending limits (each a gap to the group's members here), and
	// Dropped the messages nats.go dropped then.
	SlowConsumers int64
	Dropped       int64

	// Buffered counts the publishes taken while the connection was down,
	// into nats.go's reconnect buffer, sent on reconnection (lost only if
	// the engine is closed first); PublishErrors those refused with an
	// error (the buffer full, the connection closed, too large).
	Buffered      int64
	PublishErrors int64

	Disconnects int64 // times the connection went down
	Reconnects  int64 // times it came back
}

// Stats returns a snapshot of the engine's counters. expvar publishes
// it with one line:
//
//	expvar.Publish("dbscope_nats", expvar.Func(func() any { return engine.Stats() }))
func (e *Engine) Stats() Stats {
	e.mu.Lock()
	n := len(e.subs)
	e.mu.Unlock()
	return Stats{
		Subscriptions: n,
		SlowConsumers: e.c.slow.Load(),
		Dropped:       e.c.dropped.Load(),
		Buffered:      e.c.buffered.Load(),
		PublishErrors: e.c.publishErrors.Load(),
		Disconnects:   e.c.disconnects.Load(),
		Reconnects:    e.c.reconnects.Load(),
	}
}
