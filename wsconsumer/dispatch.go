package wsconsumer

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/patient"
)

// readLoop reads messages and has them handled until the socket closes,
// and returns the close status (-1: the socket's context ended first);
// or it returns handedOver where the socket went on on another goroutine
// (see readInline).
func (h *Handler) readLoop(pool *dbctx.Pool, s *Session) (code websocket.StatusCode, handedOver bool) {
	if h.async && h.opts.InFlight > 1 {
		return h.readConcurrent(pool, s), false
	}
	return h.readInline(pool, s, nil)
}

// readInline handles one message at a time (the sync style, and the async
// one with InFlight 1) on the goroutine that reads them, as a hand-written
// handler does: no hand-off and no second goroutine to wake per message.
// Reading stops meanwhile, which is the backpressure that reaches the
// client. A message still being handled after readOnAfter gets a reader
// from the keepalive goroutine (see Session.readOn): it reads the next
// frame, so that a client that goes away mid-message is noticed (its work
// canceled) and pings and the closing handshake are answered; that frame
// is the next one handled. Where the message is done before the reader
// has a frame, readInline leaves the socket to the reader (handedOver)
// and returns: the reader goes on with it (Handler.takeOver), and an idle
// socket keeps one goroutine, not two. first, if not nil, is a frame read
// already, handled first.
func (h *Handler) readInline(pool *dbctx.Pool, s *Session, first *frame) (code websocket.StatusCode, handedOver bool) {
	conn := s.conn.Load()
	for {
		var f frame
		switch {
		case first != nil:
			f, first = *first, nil
		case s.phase.CompareAndSwap(phaseHandling, phaseReading) || s.phase.Load() == phaseReading:
			// Close, not cancellation, ends the read: a cancelable context
			// would cost coder/websocket a context.AfterFunc per message.
			f.typ, f.data, f.err = conn.Read(s.wctx)
			if f.err != nil {
				s.sock.cancel() // the client is gone
			}
		case s.phase.CompareAndSwap(phaseAhead, phaseHandedOver):
			return 0, true // the reader has no frame yet: the socket is its
		default:
			// phaseDelivered: the reader has read the next frame.
			f = <-s.ahead
			s.ahead = nil
		}
		if f.err != nil {
			return s.closeStatus(f.err), false
		}
		s.touch()
		s.phase.Store(phaseHandling)
		h.receive(pool, s, message{f.typ, f.data})
	}
}

// readOnAfter is how long a message is handled before the keepalive
// goroutine has the socket read on (see readInline).
const readOnAfter = 250 * time.Millisecond

// The phases of a socket whose messages are handled inline.
const (
	phaseReading    = iota // reading, or between two messages
	phaseHandling          // a message is being handled, nobody reads
	phaseAhead             // a message is being handled, a reader reads on
	phaseDelivered         // a message is being handled, the reader has read the next frame
	phaseHandedOver        // the message is done, the reader will go on with the socket
)

// frame is what one read returned.
type frame struct {
	typ  websocket.MessageType
	data []byte
	err  error
}

// readOn starts a reader for a socket whose message has been handled for
// readOnAfter, unless one runs or the message is done. The reader reads
// one frame; a failed read (the client is gone) also cancels the
// socket's context, which cancels the work under way. If the message is
// still being handled, the reader hands the frame to readInline through
// s.ahead and exits; if readInline has left the socket to it
// (phaseHandedOver), it goes on with the socket itself.
// It is not counted in s.wg: it ends when the socket is closed, which
// comes after that wait, or it is the socket's goroutine.
func (s *Session) readOn() {
	if s.phase.Load() != phaseHandling {
		return
	}
	ch := make(chan frame, 1)
	s.ahead = ch // read by readInline only once it sees phaseDelivered
	if !s.phase.CompareAndSwap(phaseHandling, phaseAhead) {
		return
	}
	go func() {
		var f frame
		f.typ, f.data, f.err = s.conn.Load().Read(s.wctx)
		if f.err != nil {
			s.sock.cancel()
		}
		if s.phase.CompareAndSwap(phaseAhead, phaseDelivered) {
			ch <- f // buffered
			return
		}
		s.phase.Store(phaseReading)
		s.h.takeOver(s, f)
	}()
}

// readConcurrent reads messages and hands each to a worker goroutine, at
// most InFlight at once. Past the limit reading stops, with one message
// held: the backpressure that reaches the client. Reading on while
// messages are handled is what notices a client that goes away: its work
// is canceled then. Workers stay for workerIdle after their last message,
// so a busy socket reuses one, and an idle socket keeps none, nor
// anything of theirs: the hand-off state lives in the session (dispatch)
// and holds no channel at rest.
func (h *Handler) readConcurrent(pool *dbctx.Pool, s *Session) websocket.StatusCode {
	conn := s.conn.Load()
	limit := h.opts.InFlight
	d := &s.dispatch
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

// dispatch is the hand-off between readConcurrent and its workers.
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
	next chan message // capacity 1: the read loop's hand-off
}

// work runs m, then what the read loop hands it, until it has waited
// workerIdle for a message or the socket goes.
func (h *Handler) work(pool *dbctx.Pool, s *Session, m message) {
	defer s.wg.Done()
	d := &s.dispatch
	w := &worker{next: make(chan message, 1)}
	var t *time.Timer
	for {
		h.receive(pool, s, m)
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

func (h *Handler) receive(pool *dbctx.Pool, s *Session, m message) {
	h.callback(pool, s, &Callback{Kind: CallbackReceive, Session: s, MessageType: m.typ, Size: len(m.data)}, func(ctx context.Context) error {
		if h.c.Receive == nil {
			return nil
		}
		return h.c.Receive(ctx, s, m.typ, m.data)
	})
}

// event runs the Event callback for e, from the member's goroutine. A
// message to a group wakes all its members at once: their waits for a
// slot are patient (internal/patient), bounded by the number of members (each waits
// for one slot at a time), where refusing them would close the sockets.
func (h *Handler) event(pool *dbctx.Pool, s *Session, e groups.Event) {
	// An event of a group joined in Connect may come before the socket
	// is accepted: it waits (the member queues what follows), rather
	// than find nothing to send to.
	<-s.opened
	if h.c.Event == nil || s.sock.Err() != nil || s.conn.Load() == nil {
		return
	}
	ev := s.ev
	if ev == nil {
		ev = &events{}
		ev.fn = func(ctx context.Context) error { return h.c.Event(ctx, s, ev.e) }
		s.ev = ev
	}
	ev.e = e
	h.callback(pool, s, &Callback{Kind: CallbackEvent, Session: s, Event: e, Size: len(e.Data)}, ev.fn)
	ev.e = groups.Event{}
}

// events is what the events of a socket reuse, made at its first: the
// function that runs Event on the event at hand, and the callbacks'
// context marked patient, so that an event allocates neither. The
// member's events run one at a time, and they alone use it.
type events struct {
	e      groups.Event
	fn     func(ctx context.Context) error
	parent context.Context // what ctx was made from
	ctx    context.Context
}

// patient returns parent, the context of the socket's callbacks (the same
// for each event), marked patient (internal/patient).
func (ev *events) patient(parent context.Context) context.Context {
	if ev.parent != parent {
		ev.parent, ev.ctx = parent, patient.With(parent)
	}
	return ev.ctx
}

// callback runs fn, a Receive or an Event (cb): in the sync style one at a
// time for the socket (see Session.lockCallbacks), in a worker slot (an
// Event's taken at its first statement), its sends held until the slot is
// released; its error closes the socket.
func (h *Handler) callback(pool *dbctx.Pool, s *Session, cb *Callback, fn func(ctx context.Context) error) {
	ctx := s.cbCtx()
	var out *outbox
	if !h.async {
		if s.lockCallbacks() {
			defer s.cb.Unlock()
		}
		// Sends wait for the slot to be released (see Session.Send).
		out = s.outbox(cb.Kind)
		ctx = out
		defer out.flush()
	}
	if cb.Kind == CallbackEvent {
		ctx = s.ev.patient(ctx)
	}
	if err := h.call(ctx, pool, cb, fn); err != nil {
		if out != nil {
			out.flush() // replies first, then the close
		}
		h.fail(s, cb.Kind.String(), err)
	}
}
