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
// A message still being handled after readOnAfter gets a reader from the
// keepalive goroutine (see Session.readOn): it reads on, so that a client
// that goes away mid-message is noticed (its work canceled) and pings and
// the closing handshake are answered, and queues what it reads (see
// readAhead), handled next, in order. Where a message is done and the
// queue is empty, readInline leaves the socket to the reader (handedOver)
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
				s.cancel(endClient) // the client is gone
			}
		default: // phaseAhead: a reader reads on
			var ok bool
			if f, ok = s.ahead.next(s); !ok {
				return 0, true // nothing queued: the socket is the reader's
			}
		}
		if f.err != nil {
			return s.closeStatus(f.err), false
		}
		if s.sock.Err() != nil {
			continue // closed meanwhile: what was read ahead is not handled
		}
		if s.phase.Load() != phaseAhead {
			s.touch()
			s.phase.Store(phaseHandling)
		}
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
	phaseAhead             // a reader reads on (readOn), queueing what it reads; readInline handles the queue
	phaseHandedOver        // the queue was empty when a message was done: the reader goes on with the socket
)

// frame is what one read returned.
type frame struct {
	typ  websocket.MessageType
	data []byte
	err  error
}

// The bounds of a read-ahead queue: past either, the reader stops
// reading (the backpressure that reaches the client) until readInline
// has taken a frame. One frame is always taken, however large.
const (
	readAheadFrames = 16
	readAheadBytes  = 64 << 10
)

// readAhead is the queue between a socket's reader (readOn) and
// readInline, made at the socket's first read-on and reused.
type readAhead struct {
	mu    sync.Mutex
	q     []frame
	bytes int
	room  chan struct{} // capacity 1: readInline took a frame while the reader waited for room
	wait  bool          // the reader waits on room
}

// next takes the next frame read ahead, or, where none is queued, hands
// the socket over to the reader (phaseHandedOver) and reports false.
func (ra *readAhead) next(s *Session) (frame, bool) {
	ra.mu.Lock()
	defer ra.mu.Unlock()
	if len(ra.q) == 0 {
		s.phase.Store(phaseHandedOver)
		return frame{}, false
	}
	f := ra.q[0]
	ra.q[0] = frame{}
	ra.q = ra.q[1:]
	ra.bytes -= len(f.data)
	if ra.wait {
		ra.wait = false
		ra.room <- struct{}{}
	}
	return f, true
}

// readOn starts a reader for a socket whose message has been handled for
// readOnAfter, unless one runs or the message is done. The reader reads
// on and queues what it reads, up to readAheadFrames or readAheadBytes
// (then it waits for readInline to take one: the socket is paused, which
// a ping's missing pong is not held against, see Session.ping); a failed
// read (the client is gone, or closed) cancels the socket's context,
// which cancels the work under way, and replaces what is queued, not to
// be handled. Where readInline has found the queue empty and left the
// socket to it (phaseHandedOver), the reader goes on with the socket
// itself, from the frame it read.
// It is not counted in s.wg: it ends when the socket is closed, which
// comes after that wait, or it is the socket's goroutine.
func (s *Session) readOn() {
	if s.phase.Load() != phaseHandling {
		return
	}
	ra := s.ahead
	if ra == nil {
		ra = &readAhead{room: make(chan struct{}, 1)}
		s.ahead = ra // readInline reads it only once it sees phaseAhead
	}
	if !s.phase.CompareAndSwap(phaseHandling, phaseAhead) {
		return
	}
	go s.readAhead(ra)
}

func (s *Session) readAhead(ra *readAhead) {
	conn := s.conn.Load()
	for {
		var f frame
		f.typ, f.data, f.err = conn.Read(s.wctx)
		if f.err != nil {
			s.cancel(endClient)
		} else {
			s.touch()
		}
		ra.mu.Lock()
		if s.phase.Load() == phaseHandedOver {
			// The queue is empty: readInline has returned.
			s.phase.Store(phaseReading)
			ra.mu.Unlock()
			s.h.takeOver(s, f)
			return
		}
		if f.err != nil {
			clear(ra.q)
			ra.q, ra.bytes = append(ra.q[:0], f), 0
			ra.mu.Unlock()
			return
		}
		ra.q = append(ra.q, f)
		ra.bytes += len(f.data)
		if len(ra.q) >= readAheadFrames || ra.bytes >= readAheadBytes {
			s.pause(true)
			for len(ra.q) >= readAheadFrames || ra.bytes >= readAheadBytes {
				ra.wait = true
				ra.mu.Unlock()
				<-ra.room
				ra.mu.Lock()
			}
			s.pause(false)
		}
		ra.mu.Unlock()
	}
}

// readConcurrent reads messages and hands each to a worker goroutine, at
// most InFlight at once. Past the limit reading stops, with one message
// held: the backpressure that reaches the client; the socket is paused
// meanwhile (see Session.pause). Reading on while messages are handled is
// what notices a client that goes away: its work is canceled then. Workers stay for workerIdle after their last message,
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
			s.cancel(endClient) // the client is gone: nobody waits for in-flight work
			return s.closeStatus(err)
		}
		s.touch()
		m := message{typ, data}
		d.mu.Lock()
		if d.inFlight >= limit {
			s.pause(true) // until a message is done
			for d.inFlight >= limit {
				if d.free == nil {
					d.free = make(chan struct{})
				}
				free := d.free
				d.mu.Unlock()
				select {
				case <-free:
				case <-s.ctx.Done():
					// Closed while paused (Session.Close, Shutdown, the
					// watchdog): the status Close sent, if any.
					return s.closeStatus(nil)
				}
				d.mu.Lock()
			}
			s.pause(false)
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
		ev.fn = func(ctx context.Context) error {
			ev.letGo(s)
			return h.c.Event(ctx, s, ev.e)
		}
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
	held   bool // s.evGate, read-locked for the event at hand (see callback)
}

// letGo releases the socket's evGate where the event at hand holds it.
func (ev *events) letGo(s *Session) {
	if ev.held {
		ev.held = false
		s.evGate.RUnlock()
	}
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
	if s.lockCallbacks() {
		defer s.cb.Unlock()
	}
	if s.closed.Load() {
		// Closed (Session.Close) while this waited, or before its message
		// or event was read: the handshake may go on without the socket's
		// callbacks (see Close), none runs from the Close on.
		return
	}
	if cb.Kind == CallbackEvent {
		s.evGate.RLock()
		if !s.eventCurrent() {
			// Its group was left (or the socket closed) while it waited
			// for the socket to open or for the callback before it:
			// Leave's promise covers it.
			s.evGate.RUnlock()
			return
		}
		// Held until the Event callback begins (ev.fn lets it go), or
		// its run ends without it: a Leave meanwhile waits, so the event
		// has begun before Leave returned, as Leave promises.
		s.ev.held = true
		defer s.ev.letGo(s)
	}
	var out *outbox
	if !h.async {
		// Sends wait for the slot to be released (see Session.Send).
		out = s.outbox(cb.Kind)
		ctx = out
		defer out.flush()
	}
	if cb.Kind == CallbackEvent {
		ctx = s.ev.patient(ctx)
	}
	if err := h.call(ctx, pool, cb, fn); err != nil {
		h.fail(s, cb.Kind.String(), err) // its close writes the replies first
	}
}
