// Package natslayer is a [groups.Engine] over core NATS
// (github.com/nats-io/nats.go), for a layer whose instances are many or
// whose groups are busy: where PostgreSQL's LISTEN/NOTIFY, which takes a
// cluster-wide lock at every notifying commit and wakes every listener,
// does not carry the load. It is a module of its own, so that users who
// never use NATS do not get nats.go in their module graph.
//
//	engine, err := natslayer.Connect("nats://127.0.0.1:4222", nil)
//	…
//	layer, err := groups.New(engine, nil) // starts the engine; layer.Close closes it
//	…
//	layer.Send(ctx, "room.42", []byte(`{"text":"hi"}`)) // every member of room.42, every instance
//
// [Connect] dials a connection of the engine's own; [New] takes the
// caller's. The model:
//
//   - Subjects: a group's messages go on Options.Prefix + ".g." + the
//     group's name with '.' written ':' ([Subject]): one token, one
//     subject per group.
//   - Subscriptions: one per group per instance, made when the group gets
//     its first member here and dropped when its last one leaves.
//     Subscribe returns once the server has it: a message sent after
//     Join returned is delivered. Each has explicit pending limits
//     (Options.PendingMsgs, PendingBytes: what waits besides the message
//     being handed over), and a goroutine of nats.go's: a goroutine per
//     group, none per member.
//   - At most once, gaps told: a group that falls behind its pending
//     limits loses what overflows, and its members here get a gap
//     (groups.Event.Gap) before the next message, which the overflow
//     always leaves waiting, counted in [Stats] (SlowConsumers, Dropped);
//     when the connection breaks, the messages sent meanwhile are lost to
//     this instance, and once it is back, with every subscription, every
//     member gets a gap (groups.Stats.Gaps, Reconnects). The connection
//     reconnects forever.
//   - Publishing while disconnected: into nats.go's reconnect buffer
//     (Options.ReconnectBuffer, 8 MiB), sent on reconnection, counted in
//     Stats.Buffered; once it is full, Send fails with
//     nats.ErrReconnectBufExceeded, counted in Stats.PublishErrors (a Send
//     inside dbctx.Atomic, published at the commit, cannot fail: the
//     members of every instance get a gap in its place once the
//     connection is back, after what the buffer held). A
//     message is never dropped without a count or an error, with one
//     exception core NATS has: what a publish handed nats.go in the
//     instant before its connection broke, not yet written out or not yet
//     read by the server, is lost; the members whose own connections
//     broke too (a server restart: all of them) get a gap, but on a
//     cluster, members connected to another server do not.
//   - Transactions: the engine is not transactional; inside dbctx.Atomic,
//     Layer.Send publishes at commit (dbctx.OnCommit), never on rollback.
//   - Limits: a message, envelope included, is at most the server's
//     max_payload (1 MiB by default) and PendingBytes ([Engine.MaxPayload]);
//     Send refuses a larger one with groups.ErrTooLarge.
//   - Order: what one instance sends to a group reaches each member in
//     the order sent; the engine hands the layer one message at a time.
//
// Package natstest (groups/natslayer/natstest) runs a nats-server of a
// test's own, to kill and restart; the package's examples use it in place
// of a NATS of yours.
package natslayer
