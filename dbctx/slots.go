package dbctx

import (
	"context"
	"fmt"
	"time"
)

// acquireSlot takes a worker slot, waiting in a bounded FIFO queue for at
// most the wait timeout. Past the queue bound or the timeout it returns
// ErrBusy; a canceled ctx returns ctx's error.
func (p *Pool) acquireSlot(ctx context.Context) error {
	if p.closed.Load() {
		return ErrPoolClosed
	}
	select {
	case p.sem <- struct{}{}:
		p.c.inUse.Add(1)
		return nil
	default:
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if p.c.waiting.Add(1) > int64(p.opts.MaxWaiting) {
		p.c.waiting.Add(-1)
		p.c.busy.Add(1)
		return fmt.Errorf("%w: %d callers already waiting", ErrBusy, p.opts.MaxWaiting)
	}
	start := time.Now()
	t := time.NewTimer(p.opts.WaitTimeout)
	defer func() {
		t.Stop()
		p.c.waiting.Add(-1)
		p.c.waitCount.Add(1)
		p.c.waitNanos.Add(int64(time.Since(start)))
	}()
	select {
	case p.sem <- struct{}{}:
		p.c.inUse.Add(1)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		p.c.busy.Add(1)
		return fmt.Errorf("%w: no worker slot within %v", ErrBusy, p.opts.WaitTimeout)
	case <-p.done:
		return ErrPoolClosed
	}
}

func (p *Pool) releaseSlot() {
	p.c.inUse.Add(-1)
	<-p.sem
}
