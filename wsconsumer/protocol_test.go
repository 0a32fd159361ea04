package wsconsumer_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// Disconnect gets 1002 for a client that breaks the protocol, which the
// client is sent and echoes: a fragmented control frame, for which
// coder/websocket sends the close frame itself, and an unmasked frame,
// for which it sends none (the handler closes with 1002 then).
func TestDisconnectCodeProtocolError(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		for what, frame := range map[string][]byte{
			"fragmented ping": clientFrame(0x9, false, true, nil),
			// Empty: a payload would be left unread, which the echo
			// would come behind, out of step (Disconnect gets -1 then).
			"unmasked frame": clientFrame(0x1, true, false, nil),
		} {
			t.Run(name+"/"+what, func(t *testing.T) {
				t.Parallel()
				c, br, codes := disconnectClient(t, style, &wsconsumer.Options{Logger: quiet()})
				if _, err := c.Write(frame); err != nil {
					t.Fatal(err)
				}
				code := readClose(t, c, br)
				if code != websocket.StatusProtocolError {
					t.Fatalf("the client got close %v, want 1002", code)
				}
				// Echo the close, as a client does.
				payload := binary.BigEndian.AppendUint16(nil, uint16(code))
				if _, err := c.Write(clientFrame(0x8, true, true, payload)); err != nil {
					t.Fatal(err)
				}
				if got := <-codes; got != websocket.StatusProtocolError {
					t.Errorf("Disconnect got %v, want 1002", got)
				}
			})
		}
	}
}

// rawUpgrade upgrades a TCP connection to url by hand, for frames
// coder/websocket's client would not send.
func rawUpgrade(t *testing.T, url string) (net.Conn, *bufio.Reader) {
	t.Helper()
	host := strings.TrimPrefix(url, "ws://")
	c, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute))
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", host)
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v, %v", resp, err)
	}
	return c, br
}

// clientFrame is one frame with the given opcode and payload (under 126
// bytes), masked unless told not.
func clientFrame(op byte, fin, masked bool, payload []byte) []byte {
	b := []byte{op, byte(len(payload))}
	if fin {
		b[0] |= 0x80
	}
	if !masked {
		return append(b, payload...)
	}
	b[1] |= 0x80
	key := []byte{1, 2, 3, 4}
	b = append(b, key...)
	for i, x := range payload {
		b = append(b, x^key[i%4])
	}
	return b
}

// readClose reads server frames until a close frame, and returns its
// status.
func readClose(t *testing.T, c net.Conn, br *bufio.Reader) websocket.StatusCode {
	t.Helper()
	for {
		var h [2]byte
		if _, err := io.ReadFull(br, h[:]); err != nil {
			t.Fatalf("no close frame: %v", err)
		}
		p := make([]byte, h[1]&0x7f) // the server's control frames are short
		if _, err := io.ReadFull(br, p); err != nil {
			t.Fatal(err)
		}
		if h[0]&0x0f == 0x8 && len(p) >= 2 {
			return websocket.StatusCode(binary.BigEndian.Uint16(p))
		}
	}
}

// A sync callback that closes its socket does not hold its worker slot
// while the client takes its time to answer the close (up to
// coder/websocket's 5s, for one that does not read): Close returns at
// once there, the handshake goes on without the slot, and Sends after it
// fail with ErrClosed. With one slot, every other socket's messages
// waited behind such a client.
func TestCloseInCallbackHoldsNoSlot(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, &dbctx.Options{MaxWorkers: 1})
	sendErr := make(chan error, 1)
	h := wsconsumer.NewSync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			if _, err := dbctx.From(ctx).ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			if string(data) == "bye" {
				if err := s.Close(websocket.StatusNormalClosure, "bye"); err != nil {
					return err
				}
				sendErr <- s.SendText(ctx, "after")
			}
			return nil
		},
	}, &wsconsumer.Options{Logger: quiet()})
	url := serve(t, h)
	c, br := rawUpgrade(t, url) // reads nothing until told
	if _, err := c.Write(clientFrame(0x1, true, true, []byte("bye"))); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the callback at its statement", func() bool { return p.Stats().Acquired == 1 })
	// Well short of the handshake's 5s, on a loaded machine too.
	if err := dbtest.Wait(3*time.Second, func() bool { return p.Stats().InUse == 0 }); err != nil {
		t.Fatalf("the slot still held while the client has not answered the close: %+v", p.Stats())
	}
	if err := <-sendErr; !errors.Is(err, wsconsumer.ErrClosed) {
		t.Errorf("Send after Close: %v, want ErrClosed", err)
	}
	if code := readClose(t, c, br); code != websocket.StatusNormalClosure {
		t.Fatalf("close %v, want 1000", code)
	}
	payload := binary.BigEndian.AppendUint16(nil, uint16(websocket.StatusNormalClosure))
	if _, err := c.Write(clientFrame(0x8, true, true, payload)); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the socket ended", func() bool { return h.Len() == 0 && h.Stats().Sockets == 0 })
}
