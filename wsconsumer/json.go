package wsconsumer

import (
	"context"
	"encoding/json"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/groups"
)

// JSONConsumer is a [Consumer] whose messages are JSON text frames decoded
// into T, the port of Channels' JsonWebsocketConsumer. Turn it into a
// Consumer with [JSON].
type JSONConsumer[T any] struct {
	// Connect and Disconnect are as in [Consumer].
	Connect    func(ctx context.Context, s *Session) error
	Disconnect func(ctx context.Context, s *Session, code websocket.StatusCode)

	// Receive runs for each message that decodes into T.
	Receive func(ctx context.Context, s *Session, msg T) error

	// Invalid runs for a text frame that is not valid JSON for T; err says
	// why. Returning nil keeps the socket open (send an error reply
	// here). Nil closes the socket with 1007 (invalid frame payload data).
	Invalid func(ctx context.Context, s *Session, data []byte, err error) error

	// Event is as in [Consumer]: the events of the socket's groups.
	Event func(ctx context.Context, s *Session, e groups.Event) error
}

// JSON returns the [Consumer] that decodes text frames into T for c. A
// binary frame closes the socket with 1003 (unsupported data).
func JSON[T any](c JSONConsumer[T]) Consumer {
	return Consumer{
		Connect:    c.Connect,
		Disconnect: c.Disconnect,
		Event:      c.Event,
		Receive: func(ctx context.Context, s *Session, typ websocket.MessageType, data []byte) error {
			if typ != websocket.MessageText {
				return closeWith(websocket.StatusUnsupportedData, "binary frames not supported", nil)
			}
			msg, err := decodeJSON[T](data)
			if err != nil {
				if c.Invalid != nil {
					return c.Invalid(ctx, s, data, err)
				}
				return closeWith(websocket.StatusInvalidFramePayloadData, "invalid JSON", err)
			}
			if c.Receive == nil {
				return nil
			}
			return c.Receive(ctx, s, msg)
		},
	}
}

// decodeJSON decodes exactly one JSON value into a T; trailing data is an
// error.
func decodeJSON[T any](data []byte) (T, error) {
	var v T
	err := json.Unmarshal(data, &v)
	return v, err
}

// closeError asks the driver to close the socket with a status; it is not
// a failure of the consumer and is not logged as one.
type closeError struct {
	code   websocket.StatusCode
	reason string
	err    error
}

func (e *closeError) Error() string {
	if e.err != nil {
		return "wsconsumer: " + e.reason + ": " + e.err.Error()
	}
	return "wsconsumer: " + e.reason
}

func (e *closeError) Unwrap() error { return e.err }

func closeWith(code websocket.StatusCode, reason string, err error) error {
	return &closeError{code: code, reason: reason, err: err}
}
