package groups

import "context"

// An Engine carries a [Layer]'s messages between the instances of a
// service: [NewMemory] within one process, [NewPostgres] through
// PostgreSQL's LISTEN/NOTIFY. A Layer calls its methods; user code only
// constructs it.
type Engine interface {
	// Start starts the engine, which from then on hands what arrives for
	// the groups subscribed to in, one payload at a time (Deliver is not
	// called concurrently), in the order each sender published.
	Start(in Inbox) error

	// Subscribe starts the delivery of group's messages to this instance;
	// the layer calls it when group gets its first local member, and
	// waits: a message sent once it returned is delivered. Where the
	// engine is not connected, it returns at once, and the group is
	// subscribed on reconnection, before the gap that covers the outage;
	// one that was waiting when the engine found its connection broken
	// returns then, and is subscribed so too.
	Subscribe(ctx context.Context, group string) error

	// Unsubscribe stops it; the layer calls it when the last local member
	// of group has left.
	Unsubscribe(group string)

	// Publish sends payload (an envelope the layer made: see MaxPayload)
	// to group on every instance subscribed, this one included.
	// Transactional engines send inside ctx's transaction, if any.
	Publish(ctx context.Context, group string, payload []byte) error

	// Transactional reports whether Publish inside dbctx.Atomic goes out
	// at commit by itself; the layer defers the others to dbctx.OnCommit.
	Transactional() bool

	// MaxPayload is the largest payload Publish carries, in bytes.
	MaxPayload() int

	// Ready reports the engine's state: nil when it delivers.
	Ready() error

	// Close stops the engine; Start's goroutines have returned when it
	// does.
	Close() error
}

// An Inbox is where an [Engine] hands what arrives.
type Inbox interface {
	// Deliver hands one payload that Publish sent (it names its group).
	Deliver(payload []byte)

	// Gap says that messages to groups may have been lost (a broken
	// connection, a slow subscription); nil means every group subscribed.
	Gap(groups []string)

	// Reconnected counts a reconnection of the engine.
	Reconnected()
}
