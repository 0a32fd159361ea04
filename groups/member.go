package groups

import (
	"context"
	"runtime/debug"
	"sync"
	"time"
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

	// OnSlow runs once, when an event found the queue full: the member
	// has left its groups, its queue is dropped, and it gets nothing more
	// (but the event its callback had in hand, whose Current reports
	// false, which may begin after OnSlow has returned).
	// It runs on the member's own goroutine, or, where the callback still
	// has an event then (it may never return it: blocked on a client that
	// reads nothing), on a goroutine of its own at once, beside the
	// callback. wsconsumer closes the socket with StatusTooSlow. Like the
	// callback, it must not call the member's Close. Default: nothing.
	OnSlow func()
}

// Member is one recipient of groups' messages: typically a websocket
// (wsconsumer.Session.Join makes one). Its events are handed to its
// callback one at a time, in order, on a goroutine of its own that runs
// while events wait and for a moment after the last (a busy member keeps
// one goroutine rather than start one per event): an idle member holds no
// goroutine.
type Member struct {
	l       *Layer
	handle  func(Event)
	opts    MemberOptions
	running sync.WaitGroup // the goroutine draining the queue

	mu      sync.Mutex
	groups  map[string]struct{}
	joining map[string]chan struct{} // the Joins under way, closed when each is done; nil when none
	queue   []Event                  // from head on; the array is kept while the goroutine runs
	head    int
	bytes   int
	handing bool // queue[head] is the event in the callback's hands, not waiting (see Current)
	slow    bool // fell behind: told once (told), then nothing
	told    bool
	closed  bool
	counted bool // in the layer's Members

	// The goroutine's state: see run and Layer.sweep.
	drain    bool          // it runs
	parked   bool          // it waits on wake for the next event
	listed   bool          // in the layer's list of members whose goroutine runs
	parkedAt uint64        // the sweep's tick when it parked
	wake     chan struct{} // capacity 1; while it runs
}

// NewMember returns a member of no group yet, whose events go to handle.
// handle must not call the member's Close. A panic in handle is recovered
// and logged at Error with its stack; the member goes on with its next
// event.
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
	for {
		if m.closed || m.slow {
			m.mu.Unlock()
			return ErrClosed
		}
		ch, busy := m.joining[group]
		if !busy {
			break
		}
		// Another Join of the member to group is under way: its outcome
		// first (joined, or failed: then this one joins).
		m.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.mu.Lock()
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
	ch := make(chan struct{})
	if m.joining == nil {
		m.joining = map[string]chan struct{}{}
	}
	m.joining[group] = ch
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.joining, group)
		if len(m.joining) == 0 {
			m.joining = nil // an idle member keeps no map
		}
		m.mu.Unlock()
		close(ch)
	}()
	if done, err := l.addExisting(group, m); done {
		return err
	}
	// The group's first member here: the engine subscribes, in order with
	// the unsubscriptions of other last members.
	l.subMu.Lock()
	defer l.subMu.Unlock()
	if done, err := l.addExisting(group, m); done {
		return err
	}
	if err := l.engine.Subscribe(ctx, group); err != nil {
		m.mu.Lock()
		m.ungroup(group)
		m.mu.Unlock()
		return err
	}
	l.mu.Lock()
	in, err := m.stillIn(group)
	if in {
		l.groups[group] = map[*Member]struct{}{m: {}}
	}
	l.mu.Unlock()
	if !in {
		// Closed, or left, meanwhile: nobody here is in the group.
		l.engine.Unsubscribe(group)
	}
	return err
}

// addExisting adds m to group if group has members here, unless m was
// closed or left group meanwhile (Close and Leave take the member out of
// the layer's map of what its own holds: what it no longer holds must not
// be put back). It reports whether it is done, and Join's outcome.
func (l *Layer) addExisting(group string, m *Member) (bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := l.groups[group]
	if ms == nil {
		return false, nil
	}
	in, err := m.stillIn(group)
	if in {
		ms[m] = struct{}{}
	}
	return true, err
}

// stillIn reports whether m, joining group, is still to be in it: not
// closed or made slow (ErrClosed then) and not having left it since it
// began to join. l.mu is held (the layer's lock before the member's, as
// Deliver takes them).
func (m *Member) stillIn(group string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.slow {
		return false, ErrClosed
	}
	_, in := m.groups[group]
	return in, nil
}

// Leave takes the member out of group: once it returns, no message of
// group reaches it, those queued included; the one the callback has in
// hand, if of group, is no longer [Member.Current].
func (m *Member) Leave(group string) {
	m.mu.Lock()
	_, in := m.groups[group]
	m.mu.Unlock()
	if !in {
		return
	}
	// Out of the member's groups first, so that a Join of it under way
	// does not put it back in the layer's map (see stillIn); then out of
	// the layer's: Deliver queues under the layer's read lock, so once
	// remove has it, nothing more of group is queued, and the filter
	// below is the last word.
	m.mu.Lock()
	m.ungroup(group)
	m.mu.Unlock()
	m.l.remove(group, m)
	m.mu.Lock()
	kept := m.queue[:m.head]
	for i, e := range m.queue[m.head:] {
		if e.Group == group {
			if i > 0 || !m.handing {
				m.bytes -= len(e.Data)
				continue
			}
			e = Event{} // in hand: no group, so Current says it is left
		}
		kept = append(kept, e)
	}
	clear(m.queue[len(kept):])
	m.queue = kept
	m.mu.Unlock()
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
	m.unpark()
	m.mu.Unlock()
	for _, g := range groups {
		m.l.remove(g, m)
	}
	m.running.Wait()
}

// ungroup takes group from the member's groups; a member left in none is
// no longer counted in the layer's Members. m.mu is held.
func (m *Member) ungroup(group string) {
	delete(m.groups, group)
	if len(m.groups) == 0 && m.counted {
		m.counted = false
		m.l.c.members.Add(-1)
	}
}

// takeGroups empties the member's groups and queue, and returns the
// groups. m.mu is held.
func (m *Member) takeGroups() []string {
	groups := make([]string, 0, len(m.groups))
	for g := range m.groups {
		groups = append(groups, g)
	}
	clear(m.groups)
	m.dropQueue()
	if m.counted {
		m.counted = false
		m.l.c.members.Add(-1)
	}
	return groups
}

// dropQueue empties the queue, keeping its array for the goroutine.
// m.mu is held.
func (m *Member) dropQueue() {
	clear(m.queue)
	m.queue, m.head, m.bytes, m.handing = m.queue[:0], 0, 0, false
}

// Current reports, from the member's callback, whether the event it was
// handed is still the member's: false once the member has left the
// event's group (even to join it again), been closed or fallen behind,
// since the event was queued. A callback that waits before it acts on
// its event (for a lock, for a socket to open) asks once done waiting:
// Leave, which takes the event from the queue while it waits, cannot take
// it from the callback's hands. Called outside the callback, it reports
// false.
func (m *Member) Current() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.handing && m.queue[m.head].Group != ""
}

// enqueue queues e for the member, if it is in e's group, and reports
// whether it did; inGroup says the caller knows it is (Deliver, which
// found it in the layer's map under its read lock: see Leave). An event
// that does not fit makes the member slow. m.mu must not be held; the
// layer's mu may be.
func (m *Member) enqueue(e Event, inGroup bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || m.slow {
		return false
	}
	if !inGroup {
		if _, in := m.groups[e.Group]; !in {
			return false
		}
	}
	waiting := len(m.queue) - m.head
	if m.handing {
		waiting--
	}
	if waiting+1 > m.opts.MaxQueue || waiting > 0 && m.bytes+len(e.Data) > m.opts.MaxBytes {
		m.slow = true
		m.l.c.slow.Add(1)
		busy := m.handing
		m.dropQueue()
		if busy {
			// The callback has an event, and may keep it for good (a
			// client that reads nothing): the member is told now, on a
			// goroutine of its own, not once the callback returns.
			m.told = true
			m.running.Add(1)
			go func() {
				defer m.running.Done()
				m.tellSlow()
			}()
		} else {
			m.kick()
		}
		return false
	}
	if len(m.queue) == cap(m.queue) && m.head > 0 {
		// A queue that never empties would grow its array for ever
		// behind head: move what waits to the front first.
		n := copy(m.queue, m.queue[m.head:])
		clear(m.queue[n:])
		m.queue, m.head = m.queue[:n], 0
	}
	m.queue = append(m.queue, e)
	m.bytes += len(e.Data)
	m.kick()
	return true
}

// kick has the goroutine drain the queue: it starts it, or wakes it where
// it lingers. m.mu is held.
func (m *Member) kick() {
	if m.drain {
		m.unpark()
		return
	}
	m.drain = true
	m.wake = make(chan struct{}, 1)
	m.running.Add(1)
	go m.run()
}

// unpark wakes the goroutine where it waits for the next event; it then
// handles what is queued, or exits if nothing is. m.mu is held.
func (m *Member) unpark() {
	if m.parked {
		m.parked = false
		m.wake <- struct{}{} // never blocks: one token per park
	}
}

// run hands queued events to the callback, one at a time; for a slow
// member it leaves the groups and runs OnSlow. Once the queue is empty it
// waits for the next event (parked) until the layer's sweep finds it has
// waited for a full tick of lingerTick, or the member closes: then it
// exits, and the member holds no goroutine and no queue array. Lingering
// spares a member that gets events in quick succession a new goroutine
// per event, and that goroutine's stack growth.
func (m *Member) run() {
	defer m.running.Done()
	woken := false // by someone other than enqueue, if the queue is empty
	for {
		m.mu.Lock()
		if m.slow && !m.told {
			m.told = true
			m.mu.Unlock()
			m.tellSlow()
			continue
		}
		empty := m.head == len(m.queue)
		if m.closed || m.slow || (empty && woken) {
			m.drain, m.wake = false, nil
			m.queue, m.head = nil, 0 // let the array go while idle
			m.mu.Unlock()
			return
		}
		if empty {
			m.parked = true
			m.parkedAt = m.l.ticks.Load()
			list := !m.listed
			m.listed = true
			wake := m.wake
			m.mu.Unlock()
			if list {
				m.l.lingering(m)
			}
			<-wake
			woken = true
			continue
		}
		woken = false
		// The event stays at the head while the callback has it, so that
		// Leave and Close reach it there (Current).
		e := m.queue[m.head]
		m.handing = true
		m.bytes -= len(e.Data)
		m.mu.Unlock()
		m.call("the callback", e.Group, func() { m.handle(e) })
		m.l.c.delivered.Add(1)
		m.mu.Lock()
		if m.handing { // not dropped meanwhile
			m.handing = false
			m.queue[m.head] = Event{}
			m.head++
			if m.head == len(m.queue) {
				m.queue, m.head = m.queue[:0], 0
			}
		}
		m.mu.Unlock()
	}
}

// tellSlow takes the member, fallen behind, out of its groups, and runs
// OnSlow.
func (m *Member) tellSlow() {
	m.mu.Lock()
	groups := m.takeGroups()
	m.mu.Unlock()
	for _, g := range groups {
		m.l.remove(g, m)
	}
	if m.opts.OnSlow != nil {
		m.call("OnSlow", "", m.opts.OnSlow)
	}
}

// call runs fn, the member's callback or OnSlow, on a goroutine of the
// member's where nothing else would recover a panic of it: the panic is
// logged, with its stack, and the member goes on.
func (m *Member) call(what, group string, fn func()) {
	defer func() {
		if r := recover(); r != nil {
			m.l.log.Error("groups: a member's "+what+" panicked", "group", group, "panic", r, "stack", string(debug.Stack()))
		}
	}()
	fn()
}

// lingerTick is the period of a layer's sweep: a member's goroutine waits
// between one and two of them for the next event before it exits.
const lingerTick = 20 * time.Millisecond

// lingering adds m, whose goroutine runs, to the members the sweep looks
// at, and starts the sweep unless it runs.
func (l *Layer) lingering(m *Member) {
	l.lmu.Lock()
	defer l.lmu.Unlock()
	l.running = append(l.running, m)
	if !l.sweeping {
		l.sweeping = true
		go l.sweep()
	}
}

// sweep ends, every lingerTick, the goroutines of members that have
// waited for an event since before the last tick, and forgets members
// whose goroutine has exited. It returns once none runs: an idle layer
// holds no goroutine. One sweep per layer, where a timer per member
// would cost a timer's reset for every time a member's queue empties.
func (l *Layer) sweep() {
	t := time.NewTicker(lingerTick)
	defer t.Stop()
	for range t.C {
		tick := l.ticks.Add(1)
		l.lmu.Lock()
		kept := l.running[:0]
		for _, m := range l.running {
			m.mu.Lock()
			switch {
			case !m.drain:
				m.listed = false
			case m.parked && m.parkedAt+2 <= tick:
				m.unpark()
				fallthrough
			default:
				kept = append(kept, m)
			}
			m.mu.Unlock()
		}
		clear(l.running[len(kept):])
		l.running = kept
		if len(kept) == 0 {
			l.running = nil
			l.sweeping = false
			l.lmu.Unlock()
			return
		}
		l.lmu.Unlock()
	}
}
