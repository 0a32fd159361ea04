// Package wsconsumer runs websocket consumers over github.com/coder/websocket
// with the database discipline of Django Channels: each socket has a dbctx
// scope that is closed-old on connect, on every message received and on
// disconnect (never around sends), and released when the socket goes, so
// long-lived sockets never pin, leak or reuse a broken connection. With
// the default ConnMaxAge of 0 an idle socket holds no connection and no
// slot: 10,000 idle sockets cost the pool nothing.
//
// A [Consumer] is three callbacks, Connect, Receive and Disconnect (and
// Event, for groups); [JSON] adapts a typed [JSONConsumer]. Pick the style
// per endpoint:
//
//   - Sync ([NewSync]), for sockets that mostly ask the database: a
//     socket's callbacks run one at a time, in order, each in a worker
//     slot (a group event's and Disconnect's taken at their first
//     statement, if any), and query dbctx.From(ctx) directly. A socket
//     waiting for a slot stops reading, which pushes back on its client.
//   - Async ([NewAsync]), for sockets that mostly wait (on another
//     service, a timer, group events) or fan out: callbacks hold no slot,
//     may run several messages of a socket at once (Options.InFlight), and
//     reach the database only through dbctx.Do, so waiting holds no
//     database resource; direct use returns dbctx.ErrAsyncContext.
//
// In the sync style a message is handled on the goroutine that read it,
// and the socket is read again once it is done, as in a hand-written
// handler. A message that takes longer than 250ms has the socket read on
// meanwhile: what the client sends is queued, to be handled next, in
// order, so that pings are answered and a client that goes away or
// closes has the message under way canceled (what it sent after is then
// not handled). The reader that read on goes on with the socket, which
// keeps one goroutine once idle. Past 16 messages or 64 KiB queued, or
// InFlight messages under way in the async style, reading stops (the
// backpressure that reaches the client): the socket is paused, a pong
// that waits behind the messages does not close it, nor does
// IdleTimeout, and, on Linux, the connection's TCP state tells a client
// that went away meanwhile (where the connection is net/http's TCP or TLS
// one: behind a listener that wraps its connections, or for a client
// that falls silent, the write watchdog or TCP keepalive tells).
//
// The values of the upgrade request's context (a tenant declared with
// dbctx.Setting, the authenticated user) reach every callback;
// [Session.AddValues] adds more for the socket's life. Its scopes do not:
// those middleware.DB put in the request, of every pool, are ended at the
// upgrade (dbctx.Detach), Eager's slot with them, and callbacks find the
// socket's own (the handler's pool, Options.Pools) or none. A websocket
// route inside middleware.Atomic is refused with 500 before Connect, and
// logged at ERROR: a socket cannot outlive the request's transaction.
//
// Before any callback runs or any slot is taken, the upgrade is verified
// as websocket.Accept verifies it (method, headers, version, key, and
// the Origin against Options.Accept): a cross-site page cannot make a
// visitor's browser run Connect, and a plain GET runs nothing. At most
// Options.MaxSockets sockets (default 10,000) are served at once; past
// it, and for the conditions of package dbctx (overload, an outage, a
// closed pool: 503 or close 1013, 1001; a misconfiguration: 500 or 1011)
// a socket is answered as package middleware answers a request, a 503's
// Retry-After always 1s (middleware's DBOptions.RetryAfter does not
// reach it, and the handler has no such option). ERROR is
// logged only for a callback's own error or panic; a client that went
// away is logged at Debug, and [Handler.Stats] counts each.
//
// With Options.Layer (package groups), a socket joins groups
// ([Session.Join], left at the disconnect) and its Event callback gets
// what is sent to them, from this process or another instance, with
// Receive's discipline: the port of a Channels consumer woken by a
// channel-layer event, which closes old connections before it queries. An
// idle member holds no slot, no connection and no goroutine; one that
// falls behind its queue is closed with [StatusTooSlow].
//
//	h := wsconsumer.NewSync(pool, wsconsumer.JSON(wsconsumer.JSONConsumer[Msg]{
//		Receive: func(ctx context.Context, s *wsconsumer.Session, m Msg) error {
//			var name string
//			err := dbctx.From(ctx).QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", m.ID).Scan(&name)
//			if err != nil {
//				return err // closes with 1011 (ErrBusy: 1013); details only in the log
//			}
//			return s.SendJSON(ctx, Reply{ID: m.ID, Name: name})
//		},
//	}), nil)
//	mux.Handle("GET /ws", h)
//	…
//	h.Shutdown(ctx) // close every socket with 1001 and wait for disconnects
package wsconsumer
