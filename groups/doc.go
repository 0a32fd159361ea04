// Package groups carries messages to named groups of members, within one
// process or across the instances of a service: the port of Django
// Channels' channel layer (group_add, group_discard, group_send), with
// dbscope's database discipline for the consumers it wakes.
//
// A [Layer] runs over an [Engine]: [NewMemory] for one process (nothing
// to set up), [NewPostgres] for many instances sharing a PostgreSQL
// database (LISTEN/NOTIFY: no new infrastructure). Fan-out has two tiers:
// the engine carries one copy of a message per instance that has members
// of its group, and the layer hands it to those members from an
// in-process map. Membership lives in the process, so an instance that
// dies takes its members with it: nothing expires, nothing is stored per
// member.
//
//	layer, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: direct}), nil)
//	…
//	defer layer.Close()
//	m := layer.NewMember(func(e groups.Event) { … }, nil)
//	m.Join(ctx, "room.42")
//	layer.Send(ctx, "room.42", []byte(`{"text":"hi"}`))
//
// Package wsconsumer makes a websocket a member (Session.Join) and runs
// its Event callback with Receive's discipline; most code uses that.
//
// What is promised, and what it costs:
//
//   - Order: the messages one sender sends to one group reach each member
//     in the order sent. Members get their messages one at a time.
//   - Transactions: a Send whose ctx is inside dbctx.Atomic goes out only
//     if the transaction commits (PostgreSQL: NOTIFY is sent on the
//     scope's connection and delivered at commit; other engines: at
//     dbctx.OnCommit), and not at all on rollback. A send at
//     dbctx.OnCommit that fails once the transaction has committed (the
//     INSERT of a large message refused, the engine unreachable) is
//     logged, and every member of the group, on every instance, gets a
//     gap in its place: at once, or, where the engine cannot carry the gap
//     either (NATS down, its reconnect buffer full), once it has
//     reconnected or carried a send again. Where the commit's outcome is
//     unknown (dbctx.ErrCommitUnknown: the connection failed after
//     COMMIT was sent), a message sent at dbctx.OnCommit does not go
//     out: every member of the group, on every instance, gets a gap in
//     its place, once the COMMIT has settled on the server (its work
//     visible, if done), before Atomic returns.
//   - Never a silent drop: each member has a bounded queue
//     ([MemberOptions]); a member that falls behind it is told once
//     ([MemberOptions.OnSlow]: wsconsumer closes the socket with
//     StatusTooSlow), counted in [Stats].Slow, and gets nothing more,
//     without slowing the sender or other members. When the engine may have
//     lost messages (its connection to PostgreSQL broke), every member
//     gets an [Event] with Gap set, for each of its groups, once the engine
//     is back: time to reload state from the database.
//   - Limits: group names of 1 to 100 ASCII letters, digits, '-', '_' or
//     '.' ([ErrGroupName]); a message may be at most the engine's
//     [Engine.MaxPayload] bytes, envelope included ([ErrTooLarge]):
//     PostgreSQL 1 MiB by default ([PostgresOptions.MaxPayload]), past
//     NOTIFY's 7,999 bytes through a table, written in the sender's
//     transaction and read once per instance, in order with the rest
//     (see [NewPostgres]).
//   - Size: [MemberOptions.MaxBytes] bounds a member's backlog; a member
//     with nothing queued takes an event of any size.
package groups
