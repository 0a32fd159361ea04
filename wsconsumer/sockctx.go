package wsconsumer

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// socketCtx is a socket's context: the upgrade request's values, not its
// cancellation, canceled when the socket goes. context.WithCancel would do,
// but a cancelCtx keeps what registers on it (context.AfterFunc, cancelable
// children) in a map that, once made, stays for the context's life: a few
// hundred bytes for every idle socket, since the socket's scope registers
// once. socketCtx keeps them in a slice instead; context.AfterFunc and
// context.WithCancel find its AfterFunc method and use it.
//
// Its values are the request's, which Session.AddValues may extend for
// the socket's life: they are read through an atomic pointer.
type socketCtx struct {
	values atomic.Pointer[context.Context]
	done   chan struct{}

	mu    sync.Mutex
	after []afterEntry // nil once canceled
	next  uint64       // the id of the next entry
}

// afterEntry is one function registered with AfterFunc; its id is what
// the stop function finds it by, so registering costs one allocation,
// the stop function's.
type afterEntry struct {
	id uint64
	f  func()
}

func newSocketCtx(values context.Context) *socketCtx {
	c := &socketCtx{done: make(chan struct{})}
	c.values.Store(&values)
	return c
}

func (c *socketCtx) Deadline() (time.Time, bool) { return time.Time{}, false }
func (c *socketCtx) Value(key any) any           { return (*c.values.Load()).Value(key) }
func (c *socketCtx) Done() <-chan struct{}       { return c.done }

func (c *socketCtx) Err() error {
	select {
	case <-c.done:
		return context.Canceled
	default:
		return nil
	}
}

// cancel cancels the context and starts what was registered with
// AfterFunc, each in its own goroutine. Calls after the first do nothing.
func (c *socketCtx) cancel() {
	c.mu.Lock()
	if c.Err() != nil {
		c.mu.Unlock()
		return
	}
	close(c.done)
	after := c.after
	c.after = nil
	c.mu.Unlock()
	for _, e := range after {
		go e.f()
	}
}

// AfterFunc is context.AfterFunc for c, which calls it.
func (c *socketCtx) AfterFunc(f func()) (stop func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.Err() != nil {
		go f()
		return func() bool { return false }
	}
	id := c.next
	c.next++
	c.after = append(c.after, afterEntry{id, f})
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		i := slices.IndexFunc(c.after, func(e afterEntry) bool { return e.id == id })
		if i < 0 {
			return false
		}
		c.after = slices.Delete(c.after, i, i+1)
		return true
	}
}

func (c *socketCtx) String() string { return "wsconsumer.socketContext" }
