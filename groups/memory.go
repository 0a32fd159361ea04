package groups

import (
	"context"
	"sync"
)

// NewMemory returns an engine for one process: a message goes straight to
// the members of its group here. It needs nothing, and is not
// transactional: inside dbctx.Atomic, Layer.Send defers it to the commit.
// It carries messages of up to 16 MiB, envelope included.
func NewMemory() *Memory { return &Memory{} }

// Memory is the engine of [NewMemory].
type Memory struct {
	mu sync.Mutex // Deliver is called one payload at a time
	in Inbox
}

// maxMemoryPayload is what the memory engine carries, envelope included.
const maxMemoryPayload = 16 << 20

func (e *Memory) Start(in Inbox) error {
	e.in = in
	return nil
}

func (e *Memory) Subscribe(context.Context, string) error { return nil }
func (e *Memory) Unsubscribe(string)                      {}
func (e *Memory) Transactional() bool                     { return false }
func (e *Memory) MaxPayload() int                         { return maxMemoryPayload }
func (e *Memory) Ready() error                            { return nil }
func (e *Memory) Close() error                            { return nil }

func (e *Memory) Publish(ctx context.Context, _ string, payload []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.in.Deliver(payload)
	return nil
}
