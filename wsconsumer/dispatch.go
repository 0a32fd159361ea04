package wsconsumer

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
)

// readLoop reads messages and hands each to a worker goroutine, at most
// InFlight at once (1 in the sync style, which keeps them in order).
// Reading on while a message is handled is what notices a client that
// goes away mid-query: its work is canceled then. Past the limit reading
// stops, with one message held: the backpressure that reaches the client.
// Workers stay for workerIdle after their last message, so a busy socket
// reuses one, and an idle socket keeps none, nor anything of theirs: the
// hand-off state lives in the session (dispatch) and holds no channel at
// rest.
func (h *Handler) readLoop(pool *dbctx.Pool, s *Session) websocket.StatusCode {
	conn := s.conn.Load()
	limit := 1
	if h.async {
		limit = h.opts.InFlight
	}
	d := &s.dispatch
	// Close, not cancellation, ends the read: a cancelable context would
	// cost coder/websocket a context.AfterFunc per message.
	for {
		typ, data, err := conn.Read(s.wctx)
		if err != nil {
			s.sock.cancel() // the client is gone: nobody waits for in-flight work
			return websocket.CloseStatus(err)
		}
		s.touch()
		m := message{typ, data}
		d.mu.Lock()
		for d.inFlight >= limit {
			if d.free == nil {
				d.free = make(chan struct{})
			}
			free := d.free
			d.mu.Unlock()
			select {
			case <-free:
			case <-s.ctx.Done():
				return -1
			}
			d.mu.Lock()
		}
		d.inFlight++
		if n := len(d.idle); n > 0 {
			w := d.idle[n-1]
			d.idle[n-1] = nil
			d.idle = d.idle[:n-1]
			d.mu.Unlock()
			w.next <- m // buffered: never blocks
			continue
		}
		d.mu.Unlock()
		s.wg.Add(1)
		go h.work(pool, s, m)
	}
}

// dispatch is the hand-off between a socket's read loop and its workers.
type dispatch struct {
	mu       sync.Mutex
	inFlight int
	idle     []*worker     // workers waiting for a message
	free     chan struct{} // closed when inFlight drops, while the read loop waits
}

type message struct {
	typ  websocket.MessageType
	data []byte
}

// workerIdle is how long a worker waits for the next message of its
// socket before it exits.
const workerIdle = 100 * time.Millisecond

// worker is one worker goroutine's state, garbage once it exits.
type worker struct {
	next   chan message    // capacity 1: the read loop's hand-off
	out    *outbox         // sync style: sends held until the slot is released
	outCtx context.Context // callbacks' context, carrying out
}

// work runs m, then what the read loop hands it, until it has waited
// workerIdle for a message or the socket goes.
func (h *Handler) work(pool *dbctx.Pool, s *Session, m message) {
	defer s.wg.Done()
	d := &s.dispatch
	w := &worker{next: make(chan message, 1)}
	var t *time.Timer
	for {
		h.receive(pool, s, w, m)
		d.mu.Lock()
		d.inFlight--
		if d.free != nil {
			close(d.free)
			d.free = nil
		}
		d.idle = append(d.idle, w)
		d.mu.Unlock()
		if t == nil {
			t = time.NewTimer(workerIdle)
			defer t.Stop()
		} else {
			t.Reset(workerIdle)
		}
		select {
		case m = <-w.next:
			continue
		case <-t.C:
		case <-s.ctx.Done():
		}
		// Leaving, unless the read loop has just taken this worker from
		// the idle list: then its message is on the way and is ours.
		d.mu.Lock()
		i := slices.Index(d.idle, w)
		if i >= 0 {
			d.idle = slices.Delete(d.idle, i, i+1)
		}
		d.mu.Unlock()
		if i >= 0 {
			return
		}
		m = <-w.next
	}
}

func (h *Handler) receive(pool *dbctx.Pool, s *Session, w *worker, m message) {
	ctx := s.cbCtx()
	if !h.async {
		// Sends wait for the slot to be released (see Session.Send).
		if w.out == nil {
			w.out = &outbox{s: s}
			w.outCtx = context.WithValue(ctx, outboxKey{}, w.out)
		}
		w.out.begin()
		ctx = w.outCtx
		defer w.out.flush()
	}
	err := h.call(ctx, pool, func(ctx context.Context) error {
		if h.c.Receive == nil {
			return nil
		}
		return h.c.Receive(ctx, s, m.typ, m.data)
	})
	if err != nil {
		if w.out != nil {
			w.out.flush() // replies first, then the close
		}
		h.fail(s, err)
	}
}
