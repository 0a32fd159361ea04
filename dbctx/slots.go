package dbctx

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/dbscope/dbscope/internal/patient"
)

// Worker slots.
//
// The slot count is p.c.inUse, taken and given back with atomic operations
// while nobody waits: a message or request takes one slot and gives it
// back, and a channel used as a semaphore would cost a lock on each side.
// Callers that find every slot taken queue in FIFO order under slots.mu;
// a slot given back while anyone queues goes to the queue's head, and a
// newcomer does not take it past them. One exception, where units of work
// declare settings (a tenant): a slot goes to one of the next few waiters
// past the head when the keep holds a connection that carries that
// waiter's settings and none that carries the head's, so that the waiter
// runs with no set_config to send; a waiter is passed over at most
// handOffPasses times (see next).
//
// A waiter counts itself in p.c.waiting before it looks at the slot count,
// and releaseSlot gives its slot back before it looks at p.c.waiting: one
// of the two sees the other (the atomics are sequentially consistent), so
// a slot given back as a caller starts to wait is never missed.
//
// Every waiter has the same wait timeout, so the queue is in deadline
// order too, and one timer per pool, set for the head's deadline, ends
// the waits that time out: a waiter makes no timer of its own.
//
// While callers queue, handOff measures the pace at which slots go to
// them (a moving average of the time between two grants while the queue
// stays), and a newcomer whose turn would come after the wait timeout at
// that pace (with a quarter of it for slack) is refused at once: it would
// only time out. The pace is
// measured under contention alone, at no cost to the callers that find a
// slot free, and forgotten once older than the wait timeout: a burst
// after a quiet spell is queued up to MaxWaiting until the first grants
// measure it again.

// slotQueue holds the callers waiting for a slot.
type slotQueue struct {
	mu      sync.Mutex
	waiters []*slotWaiter // FIFO, so in deadline order
	timer   headTimer     // runs expireWaits
	closed  bool          // the pool is closed: nobody queues

	lastGrant time.Duration // monotonic() of the last grant to this queue; 0: none yet
	pace      time.Duration // moving average of the time between grants; 0: unknown
	paceAt    time.Duration // monotonic() when pace was last measured
}

// tooLate reports whether a caller queued behind ahead others would get
// its slot after timeout at the pace measured: after three quarters of
// it, the rest being slack for the pace to vary (with two slots and
// grants in pairs, the average moves by about 7% from grant to grant).
// Under slots.mu.
func (q *slotQueue) tooLate(ahead int, timeout time.Duration) bool {
	return q.pace > 0 && time.Duration(ahead+1)*q.pace > timeout*3/4
}

// granted notes a grant at now, for the pace. Under slots.mu.
func (q *slotQueue) granted(now time.Duration) {
	if q.lastGrant > 0 {
		gap := now - q.lastGrant
		if q.pace == 0 {
			q.pace = gap
		} else {
			q.pace += (gap - q.pace) / 8
		}
	}
	q.lastGrant, q.paceAt = now, now
}

type slotWaiter struct {
	ready    chan struct{} // closed when the wait ends, whatever ends it
	deadline time.Duration // monotonic()
	want     []setting     // the settings the caller's context declares
	passed   int           // grants that went past it (next); under slotQueue.mu
	end      waitEnd       // under slotQueue.mu
}

// How a wait in the slot queue ended.
type waitEnd int8

const (
	waiting  waitEnd = iota // not yet, or the waiter left (ctx done)
	granted                 // the slot is the waiter's
	timedOut                // the wait timeout passed
	closed                  // the pool was closed
)

// acquireSlot takes a worker slot, waiting in a bounded FIFO queue for at
// most the wait timeout. Past the queue bound or the timeout it returns
// ErrBusy; a canceled ctx returns ctx's error.
func (p *Pool) acquireSlot(ctx context.Context) error {
	if p.closed.Load() {
		return ErrPoolClosed
	}
	if p.c.waiting.Load() == 0 && p.grabSlot() {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	// Patient callers (see internal/patient) wait beyond the bound and do not
	// count against it: the others are refused by their own number only.
	patient := patient.Is(ctx)
	if patient {
		p.c.patient.Add(1)
		defer p.c.patient.Add(-1)
	}
	if n := p.c.waiting.Add(1); !patient && n-p.c.patient.Load() > int64(p.opts.MaxWaiting) {
		p.c.waiting.Add(-1)
		err := p.slotsBusy(fmt.Errorf("%w: %d callers already waiting", ErrBusy, p.opts.MaxWaiting))
		p.toldWait(ctx, false, 0, err)
		return err
	}
	q := &p.slots
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		p.c.waiting.Add(-1)
		return ErrPoolClosed
	}
	if len(q.waiters) == 0 && p.grabSlot() {
		q.mu.Unlock()
		p.c.waiting.Add(-1)
		return nil
	}
	if len(q.waiters) == 0 {
		// A queue forms: the time since the last grant is no gap between
		// two, and the pace measured then holds only if it is recent.
		q.lastGrant = 0
		if monotonic()-q.paceAt > p.opts.WaitTimeout {
			q.pace = 0
		}
	}
	if ahead := len(q.waiters); !patient && q.tooLate(ahead, p.opts.WaitTimeout) {
		pace := q.pace
		q.mu.Unlock()
		p.c.waiting.Add(-1)
		err := p.slotsBusy(fmt.Errorf("%w: %d callers ahead, a slot every %v: no slot within %v", ErrBusy, ahead, pace, p.opts.WaitTimeout))
		p.toldWait(ctx, false, 0, err)
		return err
	}
	start := monotonic()
	w := &slotWaiter{ready: make(chan struct{}), deadline: start + p.opts.WaitTimeout, want: settingsOf(ctx)}
	q.waiters = append(q.waiters, w)
	if !q.timer.armed {
		p.armExpiry(start)
	}
	q.mu.Unlock()

	if done := ctx.Done(); done == nil {
		<-w.ready
	} else {
		select {
		case <-w.ready:
		case <-done:
		}
	}
	q.mu.Lock()
	end := w.end
	if end == waiting {
		q.waiters = slices.DeleteFunc(q.waiters, func(x *slotWaiter) bool { return x == w })
	}
	q.mu.Unlock()
	p.c.waiting.Add(-1)
	waited := monotonic() - start
	p.c.noteWait(waited)
	err := p.waitEnded(ctx, end)
	p.toldWait(ctx, true, waited, err)
	return err
}

// waitEnded returns the outcome of a wait in the slot queue that ended
// with end.
func (p *Pool) waitEnded(ctx context.Context, end waitEnd) error {
	switch end {
	case granted:
		if err := ctx.Err(); err != nil {
			p.releaseSlot()
			return err
		}
		return nil
	case timedOut:
		return p.slotsBusy(fmt.Errorf("%w: no worker slot within %v", ErrBusy, p.opts.WaitTimeout))
	case closed:
		return ErrPoolClosed
	}
	return ctx.Err()
}

// armExpiry sets the queue's timer for its head's deadline. Under
// slots.mu, with waiters queued.
func (p *Pool) armExpiry(now time.Duration) {
	q := &p.slots
	q.timer.set(q.waiters[0].deadline - now)
}

// expireWaits ends the waits whose deadline has passed, and sets the
// timer for the next one.
func (p *Pool) expireWaits() {
	q := &p.slots
	q.mu.Lock()
	defer q.mu.Unlock()
	q.timer.armed = false
	now := monotonic()
	for len(q.waiters) > 0 && q.waiters[0].deadline <= now {
		q.pop().finish(timedOut)
	}
	if len(q.waiters) > 0 && !q.closed {
		p.armExpiry(now)
	}
}

// pop takes the queue's head. Under slots.mu.
func (q *slotQueue) pop() *slotWaiter {
	w := q.waiters[0]
	q.waiters[0] = nil
	q.waiters = q.waiters[1:]
	return w
}

// take takes the waiter at i. Under slots.mu.
func (q *slotQueue) take(i int) *slotWaiter {
	if i == 0 {
		return q.pop()
	}
	w := q.waiters[i]
	q.waiters = slices.Delete(q.waiters, i, i+1)
	return w
}

// How far past the queue's head a slot given back may go (next).
const (
	handOffScan   = 4 // waiters looked at, the head included
	handOffPasses = 2 // times a waiter may be passed over
)

// next returns the index of the waiter that the next free slot goes to:
// the head, unless the keep holds no connection that carries the head's
// settings and one that carries those of a waiter among the next
// handOffScan; that waiter then takes its turn before those ahead of it,
// each of which counts the pass. A waiter passed over handOffPasses times
// is passed no more, so a wait grows by at most that many grants and the
// queue stays in deadline order. Without declared settings, or with one
// waiter, it is the head. Under slots.mu.
func (p *Pool) next() int {
	q := &p.slots
	if len(q.waiters) < 2 || !settingsDeclared.Load() {
		return 0
	}
	kp := &p.kept
	kp.mu.Lock()
	defer kp.mu.Unlock()
	if len(kp.conns) == 0 {
		return 0
	}
	for i, w := range q.waiters[:min(len(q.waiters), handOffScan)] {
		if kp.carrying(w.want) >= 0 {
			for _, a := range q.waiters[:i] {
				a.passed++
			}
			return i
		}
		if w.passed >= handOffPasses {
			break
		}
	}
	return 0
}

// finish ends w's wait. Under slots.mu.
func (w *slotWaiter) finish(end waitEnd) {
	w.end = end
	close(w.ready)
}

// grabSlot takes a free slot, if there is one.
func (p *Pool) grabSlot() bool {
	for {
		n := p.c.inUse.Load()
		if n >= int64(p.opts.MaxWorkers) {
			return false
		}
		if p.c.inUse.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (p *Pool) releaseSlot() {
	p.c.inUse.Add(-1)
	if p.c.waiting.Load() > 0 {
		p.handOff()
	}
}

// handOff gives free slots to the callers queued longest (but see next).
func (p *Pool) handOff() {
	q := &p.slots
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.waiters) > 0 && p.grabSlot() {
		q.take(p.next()).finish(granted)
		q.granted(monotonic())
	}
}

// closeSlots ends every wait with ErrPoolClosed and queues nobody more
// (Pool.Close).
func (p *Pool) closeSlots() {
	q := &p.slots
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	for len(q.waiters) > 0 {
		q.pop().finish(closed)
	}
	q.timer.stop()
}

// slotsBusy counts err, a refusal for want of a worker slot (ErrBusy), in
// Stats.Busy and logs it: a burst of them is one warning, then one per
// interval with how many were refused (see recurring).
func (p *Pool) slotsBusy(err error) error {
	p.c.busy.Add(1)
	p.opts.Logger.Warn(msgSlotsFull, "err", err, "max_workers", p.opts.MaxWorkers,
		"max_waiting", p.opts.MaxWaiting, "wait_timeout", p.opts.WaitTimeout)
	return err
}

// msgSlotsFull is the warning of a unit of work refused for want of a
// worker slot.
const msgSlotsFull = "dbctx: overloaded: units of work refused (ErrBusy), no worker slot free in time; " +
	"raise MaxWorkers where PostgreSQL has room, else shed load before it reaches the pool"
