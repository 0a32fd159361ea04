package groups

import (
	"context"
	"sync"
)

// MemberOptions configures a [Member]. The zero value of every field is a
// useful default; a nil *MemberOptions means all defaults.
type MemberOptions struct {
	// MaxQueue bounds the events waiting for the member's callback.
	// Default: 1,000.
	MaxQueue int

	// MaxBytes bounds their data, in bytes: the backlog. An event is
	// always taken into an empty queue, however large (up to the engine's
	// MaxPayload), so a member is dropped for falling behind, never for
	// one message's size; raise it where members get large messages in
	// bursts. Default: 1 MiB (Centrifugo's default per client).
	MaxBytes int

	// OnSlow runs once, on the member's own goroutine, when an event found
	// the queue full: the member has left its groups, its queue is
	// dropped, and it gets nothing more. wsconsumer closes the socket with
	// StatusTooSlow. Default: nothing.
	OnSlow func()
}

// Member is one recipient of groups' messages: typically a websocket
// (wsconsumer.Session.Join makes one). Its events are handed to its
// callback one at a time, in order, on a goroutine of its own that runs
// only while events wait: an idle member holds no goroutine.
type Member struct {
	l       *Layer
	handle  func(Event)
	opts    MemberOptions
	running sync.WaitGroup // the goroutine draining the queue

	mu      sync.Mutex
	groups  map[string]struct{}
	queue   []Event
	bytes   int
	drain   bool // the goroutine runs
	slow    bool // fell behind: told once (told), then nothing
	told    bool
	closed  bool
	counted bool // in the layer's Members
}

// NewMember returns a member of no group yet, whose events go to handle.
// handle must not call the member's Close.
func (l *Layer) NewMember(handle func(Event), opts *MemberOptions) *Member {
	var o MemberOptions
	if opts != nil {
		o = *opts
	}
	if o.MaxQueue < 0 || o.MaxBytes < 0 {
		panic("groups: NewMember expects MaxQueue, MaxBytes >= 0")
	}
	if o.MaxQueue == 0 {
		o.MaxQueue = 1000
	}
	if o.MaxBytes == 0 {
		o.MaxBytes = 1 << 20
	}
	return &Member{l: l, handle: handle, opts: o, groups: map[string]struct{}{}}
}

// Join adds the member to group. Once it returns, every message sent to
// group reaches the member (the engine has subscribed this instance; it
// may wait for that). Joining a group twice is joining it once.
func (m *Member) Join(ctx context.Context, group string) error {
	if err := CheckGroup(group); err != nil {
		return err
	}
	l := m.l
	if l.closed.Load() {
		return ErrClosed
	}
	m.mu.Lock()
	if m.closed || m.slow {
		m.mu.Unlock()
		return ErrClosed
	}
	if _, in := m.groups[group]; in {
		m.mu.Unlock()
		return nil
	}
	m.groups[group] = struct{}{}
	if !m.counted {
		m.counted = true
		l.c.members.Add(1)
	}
	m.mu.Unlock()
	if l.addExisting(group, m) {
		return nil
	}
	// The group's first member here: the engine subscribes, in order with
	// the unsubscriptions of other last members.
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if l.addExisting(group, m) {
		return nil
	}
	if err := l.engine.Subscribe(ctx, group); err != nil {
		m.mu.Lock()
		delete(m.groups, group)
		m.mu.Unlock()
		return err
	}
	l.mu.Lock()
	l.groups[group] = map[*Member]struct{}{m: {}}
	l.mu.Unlock()
	return nil
}

// addExisting adds m to group if group has members here.
func (l *Layer) addExisting(group string, m *Member) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := l.groups[group]
	if ms == nil {
		return false
	}
	ms[m] = struct{}{}
	return true
}

// Leave takes the member out of group: once it returns, no message of
// group reaches it, those queued included.
func (m *Member) Leave(group string) {
	m.mu.Lock()
	if _, in := m.groups[group]; !in {
		m.mu.Unlock()
		return
	}
	delete(m.groups, group)
	kept := m.queue[:0]
	for _, e := range m.queue {
		if e.Group == group {
			m.bytes -= len(e.Data)
			continue
		}
		kept = append(kept, e)
	}
	clear(m.queue[len(kept):])
	m.queue = kept
	m.mu.Unlock()
	m.l.remove(group, m)
}

// remove takes m out of the layer's map of group, and has the engine
// unsubscribe when it was the last member here.
func (l *Layer) remove(group string, m *Member) {
	l.mu.Lock()
	ms := l.groups[group]
	delete(ms, m)
	last := ms != nil && len(ms) == 0
	l.mu.Unlock()
	if !last {
		return
	}
	l.subMu.Lock()
	defer l.subMu.Unlock()
	l.mu.Lock()
	ms = l.groups[group]
	empty := ms != nil && len(ms) == 0
	if empty {
		delete(l.groups, group)
	}
	l.mu.Unlock()
	if empty {
		l.engine.Unsubscribe(group)
	}
}

// Groups returns the groups the member is in.
func (m *Member) Groups() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.groups))
	for g := range m.groups {
		out = append(out, g)
	}
	return out
}

// Close takes the member out of every group, drops what waits in its
// queue, and returns once its callback is not running. It must not be
// called from the callback. It is safe to call more than once.
func (m *Member) Close() {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		m.running.Wait()
		return
	}
	m.closed = true
	groups := m.takeGroups()
	m.mu.Unlock()
	for _, g := range groups {
		m.l.remove(g, m)
	}
	m.running.Wait()
}

// takeGroups empties the member's groups and queue, and returns the
// groups. m.mu is held.
func (m *Member) takeGroups() []string {
	groups := make([]string, 0, len(m.groups))
	for g := range m.groups {
		groups = append(groups, g)
	}
	clear(m.groups)
	clear(m.queue)
	m.queue, m.bytes = m.queue[:0], 0
	if m.counted {
		m.counted = false
		m.l.c.members.Add(-1)
	}
	return groups
}

// enqueue queues e for the member, if it is in e's group, and reports
// whether it did. An event that does not fit makes the member slow.
func (m *Member) enqueue(e Event) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.slow {
		return false
	}
	if _, in := m.groups[e.Group]; !in {
		return false
	}
	if len(m.queue)+1 > m.opts.MaxQueue || len(m.queue) > 0 && m.bytes+len(e.Data) > m.opts.MaxBytes {
		m.slow = true
		m.l.c.slow.Add(1)
		clear(m.queue)
		m.queue, m.bytes = m.queue[:0], 0
		m.start()
		return false
	}
	m.queue = append(m.queue, e)
	m.bytes += len(e.Data)
	m.start()
	return true
}

// start starts the goroutine that drains the queue, unless it runs.
// m.mu is held.
func (m *Member) start() {
	if m.drain {
		return
	}
	m.drain = true
	m.running.Add(1)
	go m.run()
}

// run hands queued events to the callback, one at a time, until the queue
// is empty; for a slow member it leaves the groups and runs OnSlow.
func (m *Member) run() {
	defer m.running.Done()
	for {
		m.mu.Lock()
		if m.slow && !m.told {
			m.told = true
			groups := m.takeGroups()
			m.mu.Unlock()
			for _, g := range groups {
				m.l.remove(g, m)
			}
			if m.opts.OnSlow != nil {
				m.opts.OnSlow()
			}
			continue
		}
		if len(m.queue) == 0 || m.closed || m.slow {
			m.drain = false
			m.mu.Unlock()
			return
		}
		e := m.queue[0]
		m.queue[0] = Event{}
		m.queue = m.queue[1:]
		m.bytes -= len(e.Data)
		if len(m.queue) == 0 {
			m.queue = nil // let the array go while idle
		}
		m.mu.Unlock()
		m.handle(e)
		m.l.c.delivered.Add(1)
	}
}
