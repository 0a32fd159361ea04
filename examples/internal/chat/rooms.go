package chat

import (
	"log/slog"
	"sync"

	"github.com/dbscope/dbscope/wsconsumer"
)

// Rooms is an in-process registry of the sockets in each room, for
// pushing new messages to them. It is safe for concurrent use.
//
// It serves one process only. Several instances behind a load balancer
// would fan out through PostgreSQL LISTEN/NOTIFY (or NATS, Redis) instead.
type Rooms struct {
	log   *slog.Logger
	mu    sync.Mutex
	rooms map[string]map[*wsconsumer.Session]struct{}
	in    map[*wsconsumer.Session]string // the room each socket joined
}

// NewRooms returns an empty registry that logs failed sends to log.
func NewRooms(log *slog.Logger) *Rooms {
	return &Rooms{log: log, rooms: map[string]map[*wsconsumer.Session]struct{}{}, in: map[*wsconsumer.Session]string{}}
}

// Join puts s in room, taking it out of the room it was in. Call it once
// the socket is accepted (from a goroutine that Connect starts with
// Session.Go): a message pushed to a socket not yet accepted is lost.
func (r *Rooms) Join(room string, s *wsconsumer.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leave(s)
	if r.rooms[room] == nil {
		r.rooms[room] = map[*wsconsumer.Session]struct{}{}
	}
	r.rooms[room][s] = struct{}{}
	r.in[s] = room
}

// Leave takes s out of its room; call it from Disconnect.
func (r *Rooms) Leave(s *wsconsumer.Session) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.leave(s)
}

func (r *Rooms) leave(s *wsconsumer.Session) {
	room, ok := r.in[s]
	if !ok {
		return
	}
	delete(r.in, s)
	delete(r.rooms[room], s)
	if len(r.rooms[room]) == 0 {
		delete(r.rooms, room)
	}
}

// Broadcast sends v as JSON to every socket in room, all at once, and
// returns when every send is done. Each send runs under the receiving
// socket's own context, never the caller's: coder/websocket closes a
// socket whose write is canceled, so a sender that goes away must not take
// its listeners with it. The handler's WriteTimeout bounds each send, and
// a client too slow to take it is closed, not waited for.
func (r *Rooms) Broadcast(room string, v any) {
	r.mu.Lock()
	to := make([]*wsconsumer.Session, 0, len(r.rooms[room]))
	for s := range r.rooms[room] {
		to = append(to, s)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range to {
		wg.Go(func() {
			if err := s.SendJSON(s.Context(), v); err != nil {
				r.log.Debug("chat: push failed", "room", room, "err", err)
			}
		})
	}
	wg.Wait()
}
