package groups

import (
	"context"
	"sync"
)

// NewMemory returns an engine for one process: a message goes straight to
// the members of its group here. It needs nothing, and is not
// transactional: inside dbctx.Atomic, Layer.Send defers it to the commit.
func NewMemory() Engine { return &memory{} }

type memory struct {
	mu sync.Mutex // Deliver is called one payload at a time
	in Inbox
}

// MaxMemoryPayload is what the memory engine carries, envelope included.
const MaxMemoryPayload = 16 << 20

func (e *memory) Start(in Inbox) error {
	e.in = in
	return nil
}

func (e *memory) Subscribe(context.Context, string) error { return nil }
func (e *memory) Unsubscribe(string)                      {}
func (e *memory) Transactional() bool                     { return false }
func (e *memory) MaxPayload() int                         { return MaxMemoryPayload }
func (e *memory) Ready() error                            { return nil }
func (e *memory) Close() error                            { return nil }

func (e *memory) Publish(ctx context.Context, _ string, payload []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.in.Deliver(payload)
	return nil
}
