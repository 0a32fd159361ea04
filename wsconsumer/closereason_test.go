package wsconsumer_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// Session.Close with a reason longer than a close frame holds (123 bytes)
// closes with its code, the reason cut at a character boundary. The
// frame was refused by coder/websocket and the connection dropped: the
// client saw an abnormal closure, no status, while Disconnect was told
// the status had been sent. A code no close frame may carry still drops
// the connection, and Disconnect is told -1: nothing was sent.
func TestCloseReasonTooLong(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("é", 100) // 200 bytes, two per character
	for name, style := range styles {
		for _, tc := range []struct {
			code       websocket.StatusCode
			wantClient websocket.StatusCode
		}{
			{4000, 4000},
			{websocket.StatusAbnormalClosure, -1}, // 1006: never sent
		} {
			t.Run(name+"/"+tc.code.String(), func(t *testing.T) {
				t.Parallel()
				p, _ := dbtest.NewPool(t, nil)
				told := make(chan websocket.StatusCode, 1)
				c := wsconsumer.Consumer{
					Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, _ []byte) error {
						s.Close(tc.code, long)
						return nil
					},
					Disconnect: func(ctx context.Context, s *wsconsumer.Session, code websocket.StatusCode) { told <- code },
				}
				url := serve(t, style(p, c, &wsconsumer.Options{Logger: quiet()}))
				conn := dial(t, url)
				if err := conn.Write(context.Background(), websocket.MessageText, []byte("close")); err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				_, _, err := conn.Read(ctx)
				if got := websocket.CloseStatus(err); got != tc.wantClient {
					t.Fatalf("the client read %v (status %d), want status %d", err, got, tc.wantClient)
				}
				var ce websocket.CloseError
				if tc.wantClient != -1 {
					if !errors.As(err, &ce) || !utf8.ValidString(ce.Reason) || !strings.HasPrefix(long, ce.Reason) || len(ce.Reason) < 122 {
						t.Fatalf("the client read the reason %q, want the first 61 characters", ce.Reason)
					}
				}
				select {
				case code := <-told:
					if code != tc.wantClient {
						t.Fatalf("Disconnect was told %d, the client got %d", code, tc.wantClient)
					}
				case <-ctx.Done():
					t.Fatal("Disconnect did not run")
				}
			})
		}
	}
}
