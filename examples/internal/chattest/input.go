package chattest

import (
	"context"
	"log/slog"
	"net/http"
	"net/url"
	"testing"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/examples/internal/chat"
)

// Input checks that what PostgreSQL cannot store as text, a NUL or
// invalid UTF-8 in a room name, an author or a message body, is the
// client's error: 400 over HTTP, an error frame on a socket that stays
// open, a refused upgrade for a room name; never a 500, a close 1011 or a
// record at ERROR.
func Input(t *testing.T, s *Server) {
	errorsBefore := len(s.Logs.AtLeast(slog.LevelError))
	for _, body := range []string{
		`{"room":"a\u0000b","body":"hi"}`,
		`{"author":"a\u0000b","body":"hi"}`,
		`{"body":"a\u0000b"}`,
	} {
		if resp, text := s.do(t, "POST", "/api/messages", body); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("POST %s: %s %q, want 400", body, resp.Status, text)
		}
	}
	for _, room := range []string{"a\x00b", "a\xffb", "\xc3"} {
		if resp, text := s.do(t, "GET", "/api/messages?room="+url.QueryEscape(room), ""); resp.StatusCode != http.StatusBadRequest {
			t.Errorf("GET room %q: %s %q, want 400", room, resp.Status, text)
		}
		for _, style := range []string{"sync", "async"} {
			_, resp, err := websocket.Dial(context.Background(), s.wsURL(style, room), nil)
			if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s socket to room %q: %v, %v; want 400", style, room, err, resp)
			}
		}
	}
	for _, style := range []string{"sync", "async"} {
		c, _ := s.Dial(t, style, "input")
		writeText(t, c, `{"type":"say","body":"a\u0000b"}`)
		expectError(t, c, "message not valid UTF-8 text")
		writeText(t, c, `{"type":"say","author":"\u0000","body":"hi"}`)
		expectError(t, c, "author name not valid UTF-8 text")
		send(t, c, chat.In{Type: "say", Body: "still open"})
		expectMessage(t, c, "still open")
		c.Close(websocket.StatusNormalClosure, "")
	}
	if recs := s.Logs.AtLeast(slog.LevelError); len(recs) != errorsBefore {
		t.Errorf("logged at ERROR: %v", recs[errorsBefore:])
	}
}
