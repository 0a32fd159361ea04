package wsconsumer_test

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
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
