package wsconsumer

import (
	"context"
	"runtime/debug"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
)

// Callback is a callback of a socket about to run, as
// [Options.OnCallback] is told of it.
type Callback struct {
	// Kind says which callback is about to run.
	Kind CallbackKind
	// Session is the socket's session, as the callback gets it.
	Session *Session

	// MessageType is the type of the message Receive gets.
	MessageType websocket.MessageType

	// Size is the length in bytes of the message Receive gets, or of the
	// data of the event Event gets.
	Size int

	// Event is the event Event gets. Its Data is shared by every member
	// of the group: do not modify it.
	Event groups.Event

	// Code is the close status Disconnect gets.
	Code websocket.StatusCode
}

// CallbackKind says which callback of a [Consumer] runs.
type CallbackKind uint8

// The callbacks of a [Consumer].
const (
	CallbackConnect CallbackKind = iota + 1
	CallbackReceive
	CallbackEvent
	CallbackDisconnect
)

// String returns the callback's name: "connect", "receive", "event" or
// "disconnect" ("unknown" for another value).
func (k CallbackKind) String() string {
	switch k {
	case CallbackConnect:
		return "connect"
	case CallbackReceive:
		return "receive"
	case CallbackEvent:
		return "event"
	case CallbackDisconnect:
		return "disconnect"
	}
	return "unknown"
}

// observed runs a callback as run does, inside Options.OnCallback; done
// is told of a callback that ended its goroutine (errGoexit) too. A
// panic of the hook's, or of its done, is the callback's failure (a
// *dbctx.PanicError, which closes the socket with 1011 and is logged), as
// one of the callback's own is: it runs on the goroutine that reads the
// socket, or a worker's, where nothing else would recover it.
func (h *Handler) observed(ctx context.Context, pool *dbctx.Pool, cb *Callback, fn func(ctx context.Context) error) error {
	var done func(error)
	err := guard(func() error {
		ctx, done = h.opts.OnCallback(ctx, *cb)
		return nil
	})
	if err != nil {
		return err // the callback does not run
	}
	returned := false
	defer func() {
		if !returned && done != nil {
			// The callback ended its goroutine (runtime.Goexit): its
			// outcome is a failure too, told as a panic's would be.
			guard(func() error { done(errGoexit); return nil })
		}
	}()
	err = h.run(ctx, pool, cb, fn)
	returned = true
	if done != nil {
		if perr := guard(func() error { done(err); return nil }); perr != nil && err == nil {
			err = perr
		}
	}
	return err
}

// guard runs f and returns its error, or its panic as a
// *dbctx.PanicError.
func guard(f func() error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &dbctx.PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return f()
}
