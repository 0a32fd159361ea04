package chattest

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/examples/internal/chat"
)

// SlowBody checks that a client that sends a POST's headers and then
// trickles its body, or stops sending it, does not keep its connection
// (and the server's goroutine and file descriptor) for as long as it
// likes: the server closes it. A websocket opened before stays open past
// that bound.
func SlowBody(t *testing.T, s *Server) {
	ws, _ := s.Dial(t, "sync", "slowbody")
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "POST /api/messages HTTP/1.1\r\nHost: chat\r\nContent-Type: application/json\r\n"+
		"Content-Length: 100\r\n\r\n"+`{"room":"slowbody","bo`); err != nil {
		t.Fatal(err)
	}
	// Generous: the server's bound is 20 s.
	conn.SetReadDeadline(time.Now().Add(90 * time.Second))
	start := time.Now()
	_, err = io.ReadAll(conn) // until the server closes it
	if err != nil {
		t.Fatalf("the connection of a body never sent is still open after %v: %v", time.Since(start).Round(time.Second), err)
	}
	send(t, ws, chat.In{Type: "say", Body: "still here"})
	expectMessage(t, ws, "still here")
}
