package wsconsumer_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

func closePayload(code uint16, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, code), reason...)
}

// Disconnect's code for frames that break the protocol, the client
// echoing the close: 1002, the status coder/websocket sent, also where the
// bad frame had a payload, which the library leaves unread before the
// client's echo.
func TestDisconnectCodeBadFrames(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		frames [][]byte
		want   websocket.StatusCode
	}{
		"close 1-byte payload":   {[][]byte{clientFrame(0x8, true, true, []byte{3})}, websocket.StatusProtocolError},
		"close code 1005":        {[][]byte{clientFrame(0x8, true, true, closePayload(1005, ""))}, websocket.StatusProtocolError},
		"close code 999":         {[][]byte{clientFrame(0x8, true, true, closePayload(999, ""))}, websocket.StatusProtocolError},
		"close code 5000":        {[][]byte{clientFrame(0x8, true, true, closePayload(5000, ""))}, websocket.StatusProtocolError},
		"close code 2999":        {[][]byte{clientFrame(0x8, true, true, closePayload(2999, ""))}, websocket.StatusProtocolError},
		"rsv2":                   {[][]byte{append([]byte{0x80 | 0x20 | 0x1}, clientFrame(0x1, true, true, nil)[1:]...)}, websocket.StatusProtocolError},
		"opcode 3":               {[][]byte{clientFrame(0x3, true, true, nil)}, websocket.StatusProtocolError},
		"continuation first":     {[][]byte{clientFrame(0x0, true, true, []byte("x"))}, websocket.StatusProtocolError},
		"rsv2 with payload":      {[][]byte{append([]byte{0x80 | 0x20 | 0x1}, clientFrame(0x1, true, true, []byte("hello"))[1:]...)}, websocket.StatusProtocolError},
		"opcode 3 with payload":  {[][]byte{clientFrame(0x3, true, true, []byte("hello"))}, websocket.StatusProtocolError},
		"unmasked with payload":  {[][]byte{clientFrame(0x1, true, false, []byte("hello"))}, websocket.StatusProtocolError},
		"text inside fragmented": {[][]byte{clientFrame(0x1, false, true, []byte("a")), clientFrame(0x1, true, true, []byte("b"))}, websocket.StatusProtocolError},
	}
	for name, style := range styles {
		for what, tc := range cases {
			t.Run(name+"/"+what, func(t *testing.T) {
				t.Parallel()
				c, br, codes := disconnectClient(t, style, &wsconsumer.Options{Logger: quiet()})
				for _, f := range tc.frames {
					if _, err := c.Write(f); err != nil {
						t.Fatal(err)
					}
				}
				code := readClose(t, c, br)
				payload := binary.BigEndian.AppendUint16(nil, uint16(code))
				c.Write(clientFrame(0x8, true, true, payload))
				if got := disconnectCode(t, codes, 20*time.Second); got != tc.want {
					t.Errorf("Disconnect got %v, want %v (client was sent %v)", got, tc.want, code)
				}
			})
		}
	}
}

// The same, the client never echoing the close: Disconnect gets the 1002
// the server sent ("also where it did not answer in time").
func TestDisconnectCodeNoEcho(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		for what, f := range map[string][]byte{
			"rsv2 empty":        append([]byte{0x80 | 0x20 | 0x1}, clientFrame(0x1, true, true, nil)[1:]...),
			"rsv2 with payload": append([]byte{0x80 | 0x20 | 0x1}, clientFrame(0x1, true, true, []byte("hello"))[1:]...),
		} {
			t.Run(name+"/"+what, func(t *testing.T) {
				t.Parallel()
				c, br, codes := disconnectClient(t, style, &wsconsumer.Options{Logger: quiet()})
				c.Write(f)
				sent := readClose(t, c, br)
				if got := disconnectCode(t, codes, 30*time.Second); got != sent {
					t.Errorf("Disconnect got %v; the server sent %v", got, sent)
				}
			})
		}
	}
}

func bigFrame(n int) []byte {
	b := []byte{0x81, 0x80 | 126, byte(n >> 8), byte(n), 1, 2, 3, 4}
	key := []byte{1, 2, 3, 4}
	for i := 0; i < n; i++ {
		b = append(b, 'x'^key[i%4])
	}
	return b
}

// A message past ReadLimit, the client never echoing coder/websocket's
// 1009: Disconnect gets 1009.
func TestDisconnectCodeReadLimitNoEcho(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, br, codes := disconnectClient(t, style, &wsconsumer.Options{Logger: quiet(), ReadLimit: 1024})
			c.Write(bigFrame(2000))
			sent := readClose(t, c, br)
			if got := disconnectCode(t, codes, 30*time.Second); got != sent {
				t.Errorf("Disconnect got %v; the server sent %v", got, sent)
			}
		})
	}
}

// A server close the client never answers: Disconnect gets what was sent.
func TestDisconnectCodeIdleNoEcho(t *testing.T) {
	t.Parallel()
	for name, style := range styles {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			c, br, codes := disconnectClient(t, style, &wsconsumer.Options{Logger: quiet(), IdleTimeout: 300 * time.Millisecond})
			_ = c
			sent := readClose(t, c, br)
			if got := disconnectCode(t, codes, 30*time.Second); got != sent {
				t.Errorf("Disconnect got %v; the server sent %v", got, sent)
			}
		})
	}
}

// disconnectClient serves a consumer of style, on a pool of its own,
// whose Disconnect sends the code it gets to codes, and upgrades a raw
// client to it.
func disconnectClient(t *testing.T, style styleFn, opts *wsconsumer.Options) (c net.Conn, br *bufio.Reader, codes <-chan websocket.StatusCode) {
	t.Helper()
	p, _ := dbtest.NewPool(t, nil)
	ch := make(chan websocket.StatusCode, 1)
	h := style(p, wsconsumer.Consumer{
		Disconnect: func(_ context.Context, _ *wsconsumer.Session, code websocket.StatusCode) { ch <- code },
	}, opts)
	c, br = rawUpgrade(t, serve(t, h))
	return c, br, ch
}

// disconnectCode returns the code Disconnect got, failing t where none
// comes within bound.
func disconnectCode(t *testing.T, codes <-chan websocket.StatusCode, bound time.Duration) websocket.StatusCode {
	t.Helper()
	select {
	case got := <-codes:
		return got
	case <-time.After(bound):
		t.Fatal("no Disconnect")
		return 0
	}
}
