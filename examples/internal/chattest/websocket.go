package chattest

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
)

// Websockets checks both endpoints with real clients, each way round: a
// socket gets the room's history on connect, a message said on one socket
// reaches every socket of the room on either endpoint, and one created
// over HTTP too; bad frames get an error frame and the socket stays open;
// a bad room name is refused with 400.
func Websockets(t *testing.T, s *Server) {
	for _, styles := range [][2]string{{"sync", "async"}, {"async", "sync"}} {
		t.Run(styles[0]+"_to_"+styles[1], func(t *testing.T) {
			from, to := styles[0], styles[1]
			room := "ws " + from
			old := s.post(t, chat.Post{Room: room, Author: "http", Body: "before the sockets"})

			a, h := s.Dial(t, from, room)
			if len(h) != 1 || !same(h[0], old) {
				t.Fatalf("history on %s: %+v, want [%+v]", from, h, old)
			}
			b, h := s.Dial(t, to, room)
			if len(h) != 1 || !same(h[0], old) {
				t.Fatalf("history on %s: %+v, want [%+v]", to, h, old)
			}
			elsewhere, _ := s.Dial(t, to, "another room")

			send(t, a, chat.In{Type: "say", Author: "ann", Body: "hi from " + from})
			said := expectMessage(t, b, "hi from "+from)
			if said.Author != "ann" || said.Room != room {
				t.Fatalf("pushed %+v", said)
			}
			if echo := expectMessage(t, a, "hi from "+from); echo.ID != said.ID {
				t.Fatalf("sender got %+v, listener %+v", echo, said)
			}

			posted := s.post(t, chat.Post{Room: room, Author: "bob", Body: "over HTTP"})
			for _, c := range []*websocket.Conn{a, b} {
				if m := expectMessage(t, c, "over HTTP"); m.ID != posted.ID {
					t.Fatalf("pushed %+v, posted %+v", m, posted)
				}
			}

			c, h := s.Dial(t, to, room)
			if got, want := messageIDs(h), []int64{old.ID, said.ID, posted.ID}; !slices.Equal(got, want) {
				t.Fatalf("history after: ids %v, want %v", got, want)
			}

			// Errors are answered on the socket, which stays open.
			writeText(t, c, "{not json")
			expectError(t, c, "invalid JSON")
			send(t, c, chat.In{Type: "dance"})
			expectError(t, c, "unknown frame type")
			send(t, c, chat.In{Type: "say", Body: " "})
			expectError(t, c, "empty message")

			// The other room heard nothing: its next frame is its own.
			send(t, elsewhere, chat.In{Type: "say", Body: "only here"})
			if m := expectMessage(t, elsewhere, "only here"); m.Room != "another room" {
				t.Fatalf("pushed %+v", m)
			}

			_, resp, err := websocket.Dial(context.Background(), s.wsURL(from, strings.Repeat("r", 65)), nil)
			if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
				t.Fatalf("long room name: %v, %v; want 400", err, resp)
			}
			for _, c := range []*websocket.Conn{a, b, c, elsewhere} {
				c.Close(websocket.StatusNormalClosure, "")
			}
		})
	}
	eventually(t, "the pool to be idle", func() bool {
		st := s.Stats(t)
		return st.InUse == 0 && st.Pinned == 0
	})
}

// TwoInstances checks that two instances of the example share their rooms
// (PostgreSQL LISTEN/NOTIFY carries them): a message said on a socket of
// one, or posted over HTTP to it, reaches the sockets of the room on the
// other, of both endpoints. When the listeners' connections are
// terminated, the sockets get the room's history again (the gap), and
// messages flow again once the listeners are back.
func TwoInstances(t *testing.T, s1, s2 *Server) {
	shareAndBreak(t, s1, s2, "two instances", func() {
		if s1.env.Terminate(t) == 0 {
			t.Fatal("no backend to terminate")
		}
	})
}

// TwoInstancesNATS is TwoInstances for two instances whose rooms go over
// NATS (the examples' -layer nats://…), with nats-server killed in place
// of the listeners' connections: meanwhile both answer /readyz with 503,
// and once it is back on the same port they recover by themselves.
func TwoInstancesNATS(t *testing.T, s1, s2 *Server, nats *natstest.Server) {
	shareAndBreak(t, s1, s2, "over NATS", func() {
		nats.Kill(t)
		eventually(t, "both instances unready", func() bool { return !s1.ready() && !s2.ready() })
		nats.Restart(t)
	})
}

// shareAndBreak checks that messages said on s1 or posted to it reach
// the sockets of room on s2, breaks the instances' engine with fault, and
// checks the gap (the room's history again) and the recovery.
func shareAndBreak(t *testing.T, s1, s2 *Server, room string, fault func()) {
	a, _ := s1.Dial(t, "sync", room)
	b, _ := s2.Dial(t, "sync", room)
	c, _ := s2.Dial(t, "async", room)
	send(t, a, chat.In{Type: "say", Author: "ann", Body: "from instance 1"})
	for _, conn := range []*websocket.Conn{a, b, c} {
		expectMessage(t, conn, "from instance 1")
	}
	posted := s1.post(t, chat.Post{Room: room, Author: "bob", Body: "posted to instance 1"})
	for _, conn := range []*websocket.Conn{b, c} {
		if m := expectMessage(t, conn, "posted to instance 1"); m.ID != posted.ID {
			t.Fatalf("pushed %+v, posted %+v", m, posted)
		}
	}
	fault()
	for _, conn := range []*websocket.Conn{b, c} {
		if f := read(t, conn); f.Type != "history" || len(f.Messages) != 2 {
			t.Fatalf("after the engine's connection broke: %+v, want the history of 2", f)
		}
	}
	eventually(t, "both instances ready again", func() bool { return s1.ready() && s2.ready() })
	send(t, a, chat.In{Type: "say", Author: "ann", Body: "after the gap"})
	for _, conn := range []*websocket.Conn{b, c} {
		for {
			f := read(t, conn)
			if f.Type == "history" {
				continue // instance 1's own gap may come late
			}
			if f.Type != "message" || f.Message.Body != "after the gap" {
				t.Fatalf("got %+v, want the message after the gap", f)
			}
			break
		}
	}
}

// ready reports whether the server answers /readyz with 200.
func (s *Server) ready() bool {
	resp, err := s.Client.Get(s.URL + "/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Shutdown checks that stopping the server closes live sockets of both
// endpoints with 1001 (going away) and that run returns nil.
func Shutdown(t *testing.T, s *Server) {
	var conns []*websocket.Conn
	for _, style := range []string{"sync", "async"} {
		c, _ := s.Dial(t, style, "shutdown")
		conns = append(conns, c)
	}
	codes := make(chan websocket.StatusCode, len(conns))
	for _, c := range conns {
		go func() {
			_, _, err := c.Read(context.Background())
			codes <- websocket.CloseStatus(err)
		}()
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
	for range conns {
		if code := <-codes; code != websocket.StatusGoingAway {
			t.Fatalf("socket closed with %v, want 1001", code)
		}
	}
}

// Dial opens a websocket to /ws/<style>?room=<room> (style "sync" or
// "async"), closed at cleanup, and returns it with the history it gets
// first.
func (s *Server) Dial(t *testing.T, style, room string) (*websocket.Conn, []chat.Message) {
	t.Helper()
	return s.DialAs(t, "", style, room)
}

// DialAs is Dial as tenant's (?tenant=), or the default tenant's for "".
func (s *Server) DialAs(t *testing.T, tenant, style, room string) (*websocket.Conn, []chat.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := s.wsURL(style, room)
	if tenant != "" {
		u += "&tenant=" + url.QueryEscape(tenant)
	}
	c, resp, err := websocket.Dial(ctx, u, nil)
	if err != nil {
		t.Fatalf("dial /ws/%s: %v (%v)", style, err, resp)
	}
	t.Cleanup(func() { c.CloseNow() })
	f := read(t, c)
	if f.Type != "history" {
		t.Fatalf("first frame: %+v, want the history", f)
	}
	return c, f.Messages
}

func (s *Server) wsURL(style, room string) string {
	return "ws" + strings.TrimPrefix(s.URL, "http") + "/ws/" + style + "?room=" + url.QueryEscape(room)
}

func send(t *testing.T, c *websocket.Conn, in chat.In) {
	t.Helper()
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	writeText(t, c, string(data))
}

func writeText(t *testing.T, c *websocket.Conn, text string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Write(ctx, websocket.MessageText, []byte(text)); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// read returns the next frame, failing t after 10 seconds.
func read(t *testing.T, c *websocket.Conn) chat.Out {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, data, err := c.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f chat.Out
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatalf("frame %q: %v", data, err)
	}
	return f
}

// expectMessage reads the next frame and checks that it pushes a message
// with body.
func expectMessage(t *testing.T, c *websocket.Conn, body string) chat.Message {
	t.Helper()
	f := read(t, c)
	if f.Type != "message" || f.Message == nil || f.Message.Body != body {
		t.Fatalf("got %+v, want the message %q", f, body)
	}
	return *f.Message
}

func expectError(t *testing.T, c *websocket.Conn, want string) {
	t.Helper()
	if f := read(t, c); f.Type != "error" || !strings.Contains(f.Error, want) {
		t.Fatalf("got %+v, want an error %q", f, want)
	}
}

func messageIDs(msgs []chat.Message) []int64 {
	ids := make([]int64, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	return ids
}
