package wsconsumer

import (
	"context"
	"errors"
	"fmt"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/groups"
)

// Consumer is the callbacks of a websocket endpoint, the port of Channels'
// WebsocketConsumer methods. Every field may be nil.
//
// In the sync style ([NewSync]) each callback runs in a worker slot with
// the socket's scope in ctx (Event and Disconnect take theirs at their
// first statement): query through dbctx.From(ctx). In the async
// style ([NewAsync]) callbacks hold no slot and reach the database only
// through dbctx.Do.
//
// A callback's ctx is for the callback's own work, as an http.Request's
// context is for its handler's. In the sync style the socket's scope
// lives from one callback to the next, so a goroutine a callback leaves
// running with its ctx goes on using that scope after the callback
// returned: its statements take the socket's slot and connection again,
// pinned until the next callback's boundary, and one that runs while a
// later callback's [dbctx.Atomic] is open runs in that transaction and is
// undone with it. Work that outlives a callback belongs in [Session.Go],
// whose goroutines Disconnect waits for.
type Consumer struct {
	// Connect runs before the websocket is accepted, once the upgrade
	// request (in s.Request()) has been verified as websocket.Accept
	// verifies it, Origin included: a request Accept would refuse runs no
	// callback. Its ctx ends when the client leaves before the upgrade,
	// or at Shutdown's deadline; the socket is then not accepted, even
	// where Connect returns nil (Disconnect runs then, with -1). Returning nil accepts it; an error made with [Reject]
	// refuses it with that HTTP status; the conditions of package dbctx
	// are answered as middleware.Answer answers them: dbctx.ErrBusy,
	// dbctx.ErrUnavailable and dbctx.ErrPoolClosed with 503 and
	// Retry-After, dbctx.ErrMisconfigured with 500 (the pool logs it); any
	// other error with 500 (logged, not shown to the client).
	Connect func(ctx context.Context, s *Session) error

	// Receive runs for each message, one at a time in the sync style. An
	// error closes the socket: dbctx.ErrBusy and dbctx.ErrUnavailable with
	// 1013 (try again later), dbctx.ErrPoolClosed with 1001 (going away),
	// any other error or a panic with 1011 (internal error), the detail
	// logged and not sent to the client; so does a callback that ends
	// its goroutine with runtime.Goexit (t.FailNow in a test), which
	// Connect's refuses with 500. An error that says the client
	// went away (a send on a socket it closed, a connection reset, the
	// socket's context canceled) closes nothing more and is logged at
	// Debug only (Stats.ClientGone).
	Receive func(ctx context.Context, s *Session, typ websocket.MessageType, data []byte) error

	// Event runs for each event of the groups the socket joined
	// ([Session.Join]): a message sent to one of them, or a gap (e.Gap:
	// messages may have been lost; reload state). It runs with Receive's
	// discipline: in the sync style with the socket's scope, closed-old
	// before and after, one callback of the socket at a time (receives and
	// events in the order they come), in a worker slot taken at its first
	// statement (an event passed on without a query takes none, where
	// Receive's slot is taken before it runs) and held to its end, its
	// sends from then on held until the slot is released; in the async
	// style with no slot, one event at a time. Its error closes the socket
	// as Receive's does. A socket whose events pile up beyond its queue
	// (Options.Member) is closed with [StatusTooSlow].
	Event func(ctx context.Context, s *Session, e groups.Event) error

	// Disconnect runs once the socket is closed, whatever closed it, with
	// the close status of the closing handshake: the one the peer sent,
	// or, where the server closed the socket (Session.Close, Shutdown,
	// a failed callback; coder/websocket itself for a message past
	// ReadLimit, 1009, or a frame that breaks the protocol, 1002), the
	// one the server sent, which a peer echoes
	// (also where it did not answer in time); -1 when there was none (a
	// connection cut). It runs
	// after every receive and every goroutine started with [Session.Go]
	// has returned. In the sync style it takes its worker slot at its
	// first statement, as Event does: it runs also while every slot is
	// taken (a cleanup in memory then holds none; a statement waits as
	// any does, and may get dbctx.ErrBusy).
	Disconnect func(ctx context.Context, s *Session, code websocket.StatusCode)
}

// RejectError refuses a websocket at Connect with an HTTP status.
type RejectError struct {
	// Status is the HTTP status the upgrade request is answered with.
	Status int
	// Reason is the body of that answer (text/plain, as http.Error
	// writes it): the client reads it.
	Reason string
}

func (e *RejectError) Error() string {
	return fmt.Sprintf("wsconsumer: connect rejected: %d %s", e.Status, e.Reason)
}

// Reject returns the error Connect returns to refuse a websocket with an
// HTTP status (Channels answers 403 when connect does not accept) and a
// reason sent as the response body.
func Reject(status int, reason string) error {
	if status < 400 || status > 599 {
		panic("wsconsumer: Reject expects a 4xx or 5xx status")
	}
	return &RejectError{Status: status, Reason: reason}
}

// StatusTooSlow is the close status of a socket that did not keep up with
// the events of its groups: its queue (Options.Member) overflowed. It is
// counted in the layer's Stats.Slow.
const StatusTooSlow websocket.StatusCode = 4008

// ErrNoLayer is returned by Join on a handler without Options.Layer.
var ErrNoLayer = errors.New("wsconsumer: Join needs Options.Layer")

// ErrClosed is returned by Send on a session whose socket is closed (by
// the server, the client or the network) or not accepted yet, and,
// wrapping the write's error, by a Send whose socket closed under it; and
// by Join for a socket that joins nothing (see [Session.Join]).
var ErrClosed = errors.New("wsconsumer: websocket closed")
