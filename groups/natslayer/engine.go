package natslayer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/nats-io/nats.go"
)

// ErrNotConnected is what Ready returns, wrapped, while the connection to
// NATS is down (it reconnects by itself) or closed.
var ErrNotConnected = errors.New("natslayer: not connected to NATS")

// Engine is a [groups.Engine] over core NATS: a layer's message to a
// group is one NATS message on the group's subject ([Subject]), and each
// instance holds one subscription per group it has members of. Make one
// with [New] or [Connect] and hand it to groups.New, which starts it and
// calls its methods; Stats and Conn are for its owner.
type Engine struct {
	nc    *nats.Conn
	owned bool // dialed by Connect: Close closes it
	opts  Options

	in     groups.Inbox
	status chan nats.Status
	ctx    context.Context // ends at Close
	cancel context.CancelFunc
	done   chan struct{} // watch has returned

	mu   sync.Mutex // subs, shut
	subs map[string]*subscription
	shut bool // Close has taken subs: Subscribe refuses (groups.ErrClosed)

	// deliver serializes what the engine hands the layer: Deliver and Gap
	// from every subscription's goroutine and from watch.
	deliver sync.Mutex
	closed  bool // under deliver: nothing more is handed over

	down atomic.Bool // the connection is not up, as watch last saw it

	c struct {
		slow, dropped, buffered, publishErrors, disconnects, reconnects atomic.Int64
	}
}

// New returns an engine over nc, the caller's connection, which stays
// the caller's: Close leaves it open, and New sets none of its handlers.
// The engine follows nc's state through nc.StatusChanged, so nc should
// reconnect forever (nats.MaxReconnects(-1)) with a bounded
// ReconnectBufSize, as [Connect] sets up; a connection that gives up
// closes, and the engine with it stops delivering.
func New(nc *nats.Conn, opts *Options) *Engine {
	if nc == nil {
		panic("natslayer: New expects a connection")
	}
	return &Engine{nc: nc, opts: withDefaults(opts), subs: map[string]*subscription{}}
}

// Conn returns the engine's connection.
func (e *Engine) Conn() *nats.Conn { return e.nc }

// Start starts the engine: from then on it watches the connection and
// hands the layer what arrives. It fails on a closed connection.
func (e *Engine) Start(in groups.Inbox) error {
	if e.in != nil {
		return errors.New("natslayer: the engine was started already")
	}
	if e.nc.IsClosed() {
		return fmt.Errorf("natslayer: starting: %w", nats.ErrConnectionClosed)
	}
	e.in = in
	e.ctx, e.cancel = context.WithCancel(context.Background())
	e.done = make(chan struct{})
	e.status = e.nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	e.down.Store(!e.nc.IsConnected())
	go e.watch(e.nc.Stats().Reconnects)
	return nil
}

// watch follows the connection's state until Close: down while it
// reconnects; on reconnection, once the server has every subscription
// again (nats.go sends them before anything else), a gap for every group.
func (e *Engine) watch(reconnects uint64) {
	defer close(e.done)
	for {
		var st nats.Status
		// While down, the state is also read every second: nats.go drops
		// status events past 10 waiting, and a lost CONNECTED must not
		// leave the engine down.
		var recheck <-chan time.Time
		if e.down.Load() {
			recheck = time.After(time.Second)
		}
		select {
		case <-e.ctx.Done():
			return
		case st = <-e.status:
		case <-recheck:
			if st = e.nc.Status(); st != nats.CONNECTED {
				continue
			}
		}
		switch st {
		case nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED:
			if !e.down.Swap(true) && st != nats.CLOSED {
				e.c.disconnects.Add(1)
			}
		case nats.CONNECTED:
			if !e.down.Load() {
				continue
			}
			if !e.confirm() {
				continue // broken again: the next CONNECTED tries again
			}
			n := e.nc.Stats().Reconnects
			e.deliver.Lock()
			if !e.closed {
				for ; reconnects < n; reconnects++ {
					e.c.reconnects.Add(1)
					e.in.Reconnected()
				}
				// Messages for the groups subscribed may have been lost
				// while down; those subscribed while down (Subscribe
				// returned at once) are subscribed now.
				e.in.Gap(nil)
			}
			e.down.Store(false)
			e.deliver.Unlock()
		}
	}
}

// confirm waits for the server to confirm every subscription after a
// reconnection, and reports whether it did before the connection broke
// again or Close. nats.go reports CONNECTED before it sends the
// subscriptions and the reconnect buffer: a round trip after them means
// the server has every subscription.
func (e *Engine) confirm() bool {
	for {
		err := e.flush(e.ctx)
		switch {
		case err == nil:
			return true
		case e.ctx.Err() != nil || !e.nc.IsConnected():
			return false
		}
		e.opts.Logger.Warn("natslayer: no answer from NATS after reconnecting; trying again", "err", err)
	}
}

// flush waits for the server to have processed what was sent, for at most
// FlushTimeout where ctx has no deadline.
func (e *Engine) flush(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.opts.FlushTimeout)
		defer cancel()
	}
	return e.nc.FlushWithContext(ctx)
}

// Transactional reports false: the layer publishes a send inside
// dbctx.Atomic at dbctx.OnCommit, never on rollback.
func (e *Engine) Transactional() bool { return false }

// MaxPayload is the server's max_payload (1 MiB by default), or
// PendingBytes if smaller: a message larger than what a subscription may
// hold could never be delivered. The layer's envelope counts.
func (e *Engine) MaxPayload() int {
	n := int(e.nc.MaxPayload())
	if b := e.opts.PendingBytes; b > 0 && b < n {
		n = b
	}
	return n
}

// Ready returns nil while the connection is up, else ErrNotConnected with
// the connection's state. After a reconnection it is nil once the server
// has confirmed every subscription, as the members' gaps go out.
func (e *Engine) Ready() error {
	if st := e.nc.Status(); st != nats.CONNECTED {
		return fmt.Errorf("%w: %v", ErrNotConnected, st)
	}
	if e.down.Load() {
		return fmt.Errorf("%w: subscribing again", ErrNotConnected)
	}
	return nil
}

// Publish sends payload on group's subject. nats.go takes it into its
// buffer and returns (ctx is not needed): while the connection is down,
// into the reconnect buffer, counted in Stats.Buffered and sent on
// reconnection, and past that buffer's bound it fails with
// nats.ErrReconnectBufExceeded. Errors are counted in
// Stats.PublishErrors.
func (e *Engine) Publish(_ context.Context, group string, payload []byte) error {
	if err := e.nc.Publish(Subject(e.opts.Prefix, group), payload); err != nil {
		e.c.publishErrors.Add(1)
		return fmt.Errorf("natslayer: publishing to %s: %w", group, err)
	}
	if e.down.Load() && e.nc.IsReconnecting() {
		e.c.buffered.Add(1)
	}
	return nil
}

// Close stops the engine: nothing is handed to the layer once it returns,
// the engine's subscriptions are gone and its goroutine has returned.
// What was published is flushed to the server (for at most FlushTimeout)
// and, if Connect dialed the connection, the connection is closed (with
// what its reconnect buffer still holds, if it is down); otherwise it
// stays open. It is safe to call more than once.
func (e *Engine) Close() error {
	e.deliver.Lock()
	already := e.closed
	e.closed = true
	e.deliver.Unlock()
	if already {
		return nil
	}
	if e.in == nil { // never started
		e.mu.Lock()
		e.shut = true
		e.mu.Unlock()
		if e.owned {
			e.nc.Close()
		}
		return nil
	}
	e.cancel()
	<-e.done
	e.nc.RemoveStatusListener(e.status)
	e.mu.Lock()
	subs := e.subs
	e.subs = map[string]*subscription{}
	e.shut = true
	e.mu.Unlock()
	var err error
	for _, s := range subs {
		if uerr := s.sub.Unsubscribe(); uerr != nil && !errors.Is(uerr, nats.ErrConnectionClosed) {
			err = errors.Join(err, uerr)
		}
	}
	if e.nc.IsConnected() {
		e.flush(context.Background())
	}
	if e.owned {
		e.nc.Close()
	}
	return err
}
