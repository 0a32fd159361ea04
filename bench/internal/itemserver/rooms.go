package itemserver

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"sync"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/nats-io/nats.go"
)

// The room workload: a socket of /ws/room/{name} joins the group name;
// each text frame {"id":k,"seq":n} it sends goes to the group, and every
// member, the sender included, woken by it, looks item k up with one
// SELECT and sends {"id":k,"seq":n,"name":"item-k"}. /ws/fanout/{name} is
// the same without the lookup: members send {"id":k,"seq":n} on.

// RoomMsg is a frame of the room workload.
type RoomMsg struct {
	ID   int    `json:"id"`
	Seq  int64  `json:"seq"`
	Name string `json:"name,omitempty"`
}

// roomConsumer is the consumer of /ws/room (lookup) and /ws/fanout in the
// dbscope modes: the sync style queries the socket's scope in the Event
// callback, the async style through dbctx.Do.
func (s *Server) roomConsumer(lookupItem bool) wsconsumer.Consumer {
	async := s.cfg.Mode == "async"
	return wsconsumer.Consumer{
		Connect: func(ctx context.Context, ss *wsconsumer.Session) error {
			room := ss.Request().PathValue("name")
			if err := groups.CheckGroup(room); err != nil {
				return wsconsumer.Reject(http.StatusBadRequest, err.Error())
			}
			ss.State = room
			ss.Go(func(ctx context.Context) {
				if err := ss.Join(ctx, room); err != nil {
					ss.Close(websocket.StatusInternalError, "join failed")
					return
				}
				ss.SendText(ctx, `{"joined":true}`)
			})
			return nil
		},
		Receive: func(ctx context.Context, ss *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			return s.layer.Send(ctx, ss.State.(string), data)
		},
		Event: func(ctx context.Context, ss *wsconsumer.Session, e groups.Event) error {
			if e.Gap {
				return nil
			}
			if !lookupItem {
				return ss.Send(ctx, websocket.MessageText, e.Data)
			}
			var m RoomMsg
			if err := json.Unmarshal(e.Data, &m); err != nil {
				return nil
			}
			var err error
			if async {
				err = dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
					return sc.QueryRowContext(ctx, itemQuery, m.ID).Scan(&m.Name)
				})
			} else {
				err = dbctx.From(ctx).QueryRowContext(ctx, itemQuery, m.ID).Scan(&m.Name)
			}
			if err != nil {
				return err
			}
			return ss.SendJSON(ctx, m)
		},
	}
}

// rawRooms is the raw mode's room workload, as a hand-written server
// does it (the gorilla/websocket chat example's hub): an in-process map
// of members, each with a buffered channel of messages and a goroutine
// that takes them, looks the item up on the plain *sql.DB, and writes.
// A member whose channel is full is dropped.
//
// With Config.RawNATS the rooms go between instances over NATS, as a
// hand-written server would carry them: one subscription per room per
// instance (subject bench.raw.<room>), made for its first member here and
// dropped with its last; a frame is published there, and what arrives is
// fanned out to the members here.
type rawRooms struct {
	mu    sync.Mutex
	rooms map[string]map[*rawMember]struct{}
	nc    *nats.Conn                    // with RawNATS
	subs  map[string]*nats.Subscription // with RawNATS: a room's, while it has members here
}

// join adds m to room.
func (rr *rawRooms) join(room string, m *rawMember) error {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if rr.rooms[room] == nil {
		if rr.nc != nil {
			sub, err := rr.nc.Subscribe("bench.raw."+room, func(msg *nats.Msg) { rr.fanout(room, msg.Data) })
			if err == nil {
				err = rr.nc.Flush() // the server has the interest: nothing sent from now on is missed
			}
			if err != nil {
				return err
			}
			rr.subs[room] = sub
		}
		rr.rooms[room] = map[*rawMember]struct{}{}
	}
	rr.rooms[room][m] = struct{}{}
	return nil
}

// leave takes m out of room.
func (rr *rawRooms) leave(room string, m *rawMember) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	delete(rr.rooms[room], m)
	if len(rr.rooms[room]) == 0 {
		delete(rr.rooms, room)
		if sub := rr.subs[room]; sub != nil {
			sub.Unsubscribe()
			delete(rr.subs, room)
		}
	}
}

// send sends a frame to room: over NATS, or to the members here.
func (rr *rawRooms) send(room string, data []byte) error {
	if rr.nc != nil {
		return rr.nc.Publish("bench.raw."+room, data)
	}
	rr.fanout(room, data)
	return nil
}

// fanout hands data to every member of room here; one whose channel is
// full is dropped.
func (rr *rawRooms) fanout(room string, data []byte) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for o := range rr.rooms[room] {
		select {
		case o.send <- data:
		default:
			o.c.CloseNow() // too slow
		}
	}
}

type rawMember struct {
	c    *websocket.Conn
	send chan []byte
}

func (s *Server) rawRoom(lookupItem bool) http.Handler {
	db := s.db
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		room := r.PathValue("name")
		if groups.CheckGroup(room) != nil || strings.Contains(room, ".") {
			http.Error(w, "bad room name", http.StatusBadRequest)
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		if !s.raw.add(c) {
			c.Close(websocket.StatusGoingAway, "server shutting down")
			return
		}
		defer s.raw.remove(c)
		ctx := context.WithoutCancel(r.Context())
		m := &rawMember{c: c, send: make(chan []byte, 256)}
		rr := s.rawRooms
		if err := rr.join(room, m); err != nil {
			c.Close(websocket.StatusInternalError, "join failed")
			return
		}
		done := make(chan struct{})
		defer func() {
			rr.leave(room, m)
			close(done)
		}()
		go func() { // the member's writer
			for {
				select {
				case data := <-m.send:
					if lookupItem {
						var msg RoomMsg
						if json.Unmarshal(data, &msg) == nil && db.QueryRowContext(ctx, itemQuery, msg.ID).Scan(&msg.Name) == nil {
							data, _ = json.Marshal(msg)
						}
					}
					if c.Write(ctx, websocket.MessageText, data) != nil {
						c.CloseNow()
						return
					}
				case <-done:
					return
				}
			}
		}()
		if c.Write(ctx, websocket.MessageText, []byte(`{"joined":true}`)) != nil {
			return
		}
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			if rr.send(room, data) != nil {
				return
			}
		}
	})
}
