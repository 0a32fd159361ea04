package chat

// In is a frame a client sends on a socket of /ws/sync?room= or
// /ws/async?room=, to post to that room:
//
//	{"type":"say","author":"ann","body":"hi"}
type In struct {
	Type   string `json:"type"`
	Author string `json:"author,omitempty"`
	Body   string `json:"body,omitempty"`
}

// Out is a frame the server sends on a socket:
//
//	{"type":"history","messages":[…]}  the room's latest messages, first
//	{"type":"message","message":{…}}   a new message in the room
//	{"type":"error","error":"…"}       the last frame was refused
//
// A message may arrive both live and in a history sent at the same time;
// clients keep messages by id.
type Out struct {
	Type     string    `json:"type"`
	Messages []Message `json:"messages,omitempty"`
	Message  *Message  `json:"message,omitempty"`
	Error    string    `json:"error,omitempty"`
}

// HistoryFrame returns the frame that carries a room's history.
func HistoryFrame(msgs []Message) Out { return Out{Type: "history", Messages: msgs} }

// MessageFrame returns the frame that pushes a new message.
func MessageFrame(m Message) Out { return Out{Type: "message", Message: &m} }

// RefFrame returns the frame that tells, between servers, of a new message
// too large to carry: its id, for the receiving server to read it. Clients
// never get one.
func RefFrame(m Message) Out {
	return Out{Type: "ref", Message: &Message{ID: m.ID, Tenant: m.Tenant, Room: m.Room}}
}

// ErrorFrame returns the frame that refuses a client's frame.
func ErrorFrame(err error) Out { return Out{Type: "error", Error: err.Error()} }
