package chattest

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/examples/internal/chat"
)

// maskedText is a client's text frame carrying payload (under 64 KiB).
func maskedText(payload []byte) []byte {
	b := []byte{0x81}
	if n := len(payload); n < 126 {
		b = append(b, 0x80|byte(n))
	} else {
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	}
	key := []byte{7, 8, 9, 10}
	b = append(b, key...)
	for i, x := range payload {
		b = append(b, x^key[i%4])
	}
	return b
}

// SaidThenGone checks that a message said on a socket whose client leaves
// at once (a reset right after the frame) is stored only where the room
// hears of it: the socket's ctx canceled between the INSERT and the
// group's Send left messages in the table that no socket was ever pushed.
func SaidThenGone(t *testing.T, s *Server) {
	for _, style := range []string{"sync", "async"} {
		t.Run(style, func(t *testing.T) {
			room := "gone " + style
			l, _ := s.Dial(t, "sync", room)
			host := strings.TrimPrefix(s.URL, "http://")
			path := strings.TrimPrefix(s.wsURL(style, room), "ws://"+host)
			var wg sync.WaitGroup
			const n = 100
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c, err := net.DialTimeout("tcp", host, 10*time.Second)
					if err != nil {
						t.Error(err)
						return
					}
					defer c.Close()
					c.SetDeadline(time.Now().Add(30 * time.Second))
					fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
						"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", path, host)
					br := bufio.NewReader(c)
					resp, err := http.ReadResponse(br, nil)
					if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
						return // refused: nothing said
					}
					data, _ := json.Marshal(chat.In{Type: "say", Author: "x", Body: fmt.Sprint("m", i)})
					c.Write(maskedText(data))
					time.Sleep(time.Duration(i%5) * time.Millisecond)
					c.(*net.TCPConn).SetLinger(0)
				}()
			}
			wg.Wait()
			heard := map[string]bool{}
			for {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				_, data, err := l.Read(ctx)
				cancel()
				if err != nil {
					break
				}
				var f chat.Out
				json.Unmarshal(data, &f)
				if f.Type == "message" && f.Message != nil {
					heard[f.Message.Body] = true
				}
			}
			rows, err := s.env.Admin().Query("SELECT body FROM "+s.env.Schema()+".messages WHERE room = $1", room)
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			var stored, unheard []string
			for rows.Next() {
				var b string
				rows.Scan(&b)
				stored = append(stored, b)
				if !heard[b] {
					unheard = append(unheard, b)
				}
			}
			t.Logf("%d stored, %d heard", len(stored), len(heard))
			if len(unheard) > 0 {
				t.Errorf("%d messages stored that the room never heard: %v", len(unheard), unheard)
			}
		})
	}
}
