package natslayer

import (
	"context"
	"errors"
	"fmt"

	"github.com/dbscope/dbscope/groups"
	"github.com/nats-io/nats.go"
)

// subscription is the engine's subscription to one group's subject.
type subscription struct {
	e     *Engine
	group string
	sub   *nats.Subscription // set before e.subs holds s; handle uses its message's
	refs  int                // under e.mu: Subscribes not yet Unsubscribed

	// Under e.deliver:
	dropped int  // nats.go's drops seen so far
	gone    bool // unsubscribed: deliver nothing more
}

// Subscribe subscribes to group's subject, with the pending limits of
// Options, and waits (for at most ctx's deadline, else FlushTimeout) for
// the server to confirm it: a message published anywhere once it
// returned is delivered. While the connection is down it returns at
// once; nats.go subscribes on reconnection, and the layer's members get a
// gap then.
//
// After Close it returns groups.ErrClosed, and subscribes nothing.
//
// nats.go hands each subscription's messages, in order, to a goroutine
// of the subscription's own; the engine hands them to the layer one at a
// time, across groups. A group whose messages arrive faster than this
// instance delivers them fills its own pending limits and loses its own
// messages only (its members get a gap): other groups wait on their own
// subscriptions.
func (e *Engine) Subscribe(ctx context.Context, group string) error {
	e.mu.Lock()
	if e.shut {
		e.mu.Unlock()
		return groups.ErrClosed
	}
	if s := e.subs[group]; s != nil {
		s.refs++
		e.mu.Unlock()
		return nil
	}
	e.mu.Unlock()
	s := &subscription{e: e, group: group, refs: 1}
	sub, err := e.nc.Subscribe(Subject(e.opts.Prefix, group), s.handle)
	if err != nil {
		if e.isShut() {
			return groups.ErrClosed // Close closed Connect's connection meanwhile
		}
		return fmt.Errorf("natslayer: subscribing to %s: %w", group, err)
	}
	// Room for the largest message the server carries, whatever this
	// instance's own limits: another instance's PendingBytes may be larger
	// than this one's, and its messages so.
	if err := sub.SetPendingLimits(pendingLimits(e.opts, int(e.nc.MaxPayload()))); err != nil {
		sub.Unsubscribe()
		return fmt.Errorf("natslayer: subscribing to %s: %w", group, err)
	}
	s.sub = sub
	e.mu.Lock()
	if e.shut {
		// Closed meanwhile: Close took the subscriptions before this one.
		e.mu.Unlock()
		sub.Unsubscribe()
		return groups.ErrClosed
	}
	e.subs[group] = s
	e.mu.Unlock()
	for {
		if !e.nc.IsConnected() {
			return nil // subscribed on reconnection, then a gap
		}
		err := e.flush(ctx)
		if err == nil {
			return nil
		}
		// nats.go fails a flush with ErrConnectionClosed when the
		// connection breaks under it: the loop looks again.
		if !errors.Is(err, nats.ErrConnectionClosed) || e.nc.IsClosed() {
			e.Unsubscribe(group)
			if e.isShut() {
				return groups.ErrClosed
			}
			return fmt.Errorf("natslayer: subscribing to %s: %w", group, err)
		}
	}
}

// isShut reports whether Close has taken the subscriptions.
func (e *Engine) isShut() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.shut
}

// Unsubscribe drops group's subscription (the layer calls it once per
// Subscribe): once it returns, nothing more of group is delivered here.
func (e *Engine) Unsubscribe(group string) {
	e.mu.Lock()
	s := e.subs[group]
	if s == nil {
		e.mu.Unlock()
		return
	}
	if s.refs--; s.refs > 0 {
		e.mu.Unlock()
		return
	}
	delete(e.subs, group)
	e.mu.Unlock()
	e.deliver.Lock()
	s.gone = true
	s.countDrops(s.sub) // for the count: nobody is left to tell
	e.deliver.Unlock()
	s.sub.Unsubscribe()
}

// pendingLimits returns nats.go's pending limits for a subscription:
// Options' PendingMsgs and PendingBytes, plus room for one message of
// maxPayload bytes (the server's max_payload), the one in hand. nats.go counts the message it hands
// to handle as pending until handle returns; without that room, a message
// that arrived while the one in hand was the only one pending could be
// dropped with nothing left to deliver after it, so that handle, which
// tells and counts drops before each delivery, would not run again until
// the group's next message (maybe never). With it, nats.go drops a
// message only where PendingMsgs, or PendingBytes (it is at least
// maxPayload), wait besides the one in hand: a message is always left,
// and its delivery brings the gap. Negative limits stay unbounded.
func pendingLimits(o Options, maxPayload int) (msgs, bytes int) {
	msgs, bytes = o.PendingMsgs, o.PendingBytes
	if msgs > 0 {
		msgs++
	}
	if bytes > 0 {
		bytes += maxPayload
	}
	return msgs, bytes
}

// handle runs on the subscription's goroutine for each message, in the
// order they arrived.
func (s *subscription) handle(m *nats.Msg) {
	e := s.e
	e.deliver.Lock()
	defer e.deliver.Unlock()
	if e.closed || s.gone {
		return
	}
	// Drops come before the message at hand: the gap goes first.
	if d := s.countDrops(m.Sub); d > 0 {
		e.opts.Logger.Warn("natslayer: a group fell behind its pending limits; its members get a gap",
			"group", s.group, "dropped", d)
		e.in.Gap([]string{s.group})
	}
	e.in.Deliver(m.Data)
}

// countDrops counts what nats.go dropped since the last call, past the
// subscription's pending limits, and returns it. nats.go reports a slow
// consumer only where one starts (ErrSlowConsumer to the connection's
// error handler, which a connection passed to New may not route here);
// its count of drops sees every one, and seen from here, in order with
// the deliveries. A drop always leaves a message pending behind it (see
// pendingLimits), whose handle calls this first. e.deliver is held.
func (s *subscription) countDrops(sub *nats.Subscription) int {
	n, err := sub.Dropped()
	if err != nil || n <= s.dropped {
		return 0
	}
	d := n - s.dropped
	s.dropped = n
	s.e.c.slow.Add(1)
	s.e.c.dropped.Add(int64(d))
	return d
}
