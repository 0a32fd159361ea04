package dbctx

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Worker slots.
//
// The slot count is p.c.inUse, taken and given back with atomic operations
// while nobody waits: a message or request takes one slot and gives it
// back, and a channel used as a semaphore would cost a lock on each side.
// Callers that find every slot taken queue in FIFO order under slots.mu;
// a slot given back while anyone queues goes to the queue's head, and a
// newcomer does not take it past them.
//
// A waiter counts itself in p.c.waiting before it looks at the slot count,
// and releaseSlot gives its slot back before it looks at p.c.waiting: one
// of the two sees the other (the atomics are sequentially consistent), so
// a slot given back as a caller starts to wait is never missed.

// slotQueue holds the callers waiting for a slot.
type slotQueue struct {
	mu      sync.Mutex
	waiters []*slotWaiter // FIFO
}

type slotWaiter struct {
	ready   chan struct{} // closed when granted
	granted bool          // under slotQueue.mu: the slot is the waiter's
}

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
	if p.c.waiting.Add(1) > int64(p.opts.MaxWaiting) {
		p.c.waiting.Add(-1)
		p.c.busy.Add(1)
		return fmt.Errorf("%w: %d callers already waiting", ErrBusy, p.opts.MaxWaiting)
	}
	q := &p.slots
	q.mu.Lock()
	if len(q.waiters) == 0 && p.grabSlot() {
		q.mu.Unlock()
		p.c.waiting.Add(-1)
		return nil
	}
	w := &slotWaiter{ready: make(chan struct{})}
	q.waiters = append(q.waiters, w)
	q.mu.Unlock()

	start := time.Now()
	t := time.NewTimer(p.opts.WaitTimeout)
	defer func() {
		t.Stop()
		p.c.waiting.Add(-1)
		p.c.waitCount.Add(1)
		p.c.waitNanos.Add(int64(time.Since(start)))
	}()
	var err error
	timedOut := false
	select {
	case <-w.ready:
		return nil
	case <-ctx.Done():
		err = ctx.Err()
	case <-t.C:
		timedOut = true
	case <-p.done:
		err = ErrPoolClosed
	}
	q.mu.Lock()
	granted := w.granted
	if !granted {
		q.waiters = slices.DeleteFunc(q.waiters, func(x *slotWaiter) bool { return x == w })
	}
	q.mu.Unlock()
	switch {
	case granted && timedOut:
		return nil // the slot came as the wait ended
	case granted:
		p.releaseSlot()
	case timedOut:
		p.c.busy.Add(1)
		err = fmt.Errorf("%w: no worker slot within %v", ErrBusy, p.opts.WaitTimeout)
	}
	return err
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

// handOff gives free slots to the callers queued longest.
func (p *Pool) handOff() {
	q := &p.slots
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.waiters) > 0 && p.grabSlot() {
		w := q.waiters[0]
		q.waiters[0] = nil
		q.waiters = q.waiters[1:]
		w.granted = true
		close(w.ready)
	}
}
