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

// Start implements [Engine]: what is published from then on goes to in.
func (e *Memory) Start(in Inbox) error {
	e.in = in
	return nil
}

// Subscribe implements [Engine]: every group of the process is heard.
func (e *Memory) Subscribe(context.Context, string) error { return nil }

// Unsubscribe implements [Engine]: nothing to do.
func (e *Memory) Unsubscribe(string) {}

// Transactional reports false: the layer publishes a send inside
// dbctx.Atomic at dbctx.OnCommit, never on rollback.
func (e *Memory) Transactional() bool { return false }

// MaxPayload is 16 MiB, the layer's envelope included.
func (e *Memory) MaxPayload() int { return maxMemoryPayload }

// Ready reports nil: the engine always delivers.
func (e *Memory) Ready() error { return nil }

// Close implements [Engine]: nothing to stop.
func (e *Memory) Close() error { return nil }

// Publish hands payload to the layer of this process, before it returns.
func (e *Memory) Publish(ctx context.Context, _ string, payload []byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.in.Deliver(payload)
	return nil
}
