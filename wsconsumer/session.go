package wsconsumer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/afterfunc"
	"github.com/dbscope/dbscope/internal/answer"
	"github.com/dbscope/dbscope/internal/lazyslot"
)

// Session is one websocket connection, handed to every callback of its
// [Consumer]. Send, SendText, SendJSON, Close and Go are safe to call from
// several goroutines.
type Session struct {
	// State is free for the consumer's per-socket state, typically set in
	// Connect. Sync callbacks run one at a time; async ones with InFlight
	// above 1, and goroutines started with Go, must synchronize access.
	State any

	h        *Handler
	req      *http.Request
	conn     atomic.Pointer[websocket.Conn] // nil until accepted
	raw      net.Conn                       // the connection conn runs on, for its TCP state (see pause)
	closed   atomic.Bool                    // Close was called: Sends fail with ErrClosed
	opened   chan struct{}                  // closed once accepted, or refused (conn nil then): events wait for it
	closeDue websocket.StatusCode           // a close asked before the socket was accepted (closeOrDue), with closeWhy; under mu
	closeWhy string
	ctx      context.Context                 // the socket's context: request values, canceled at disconnect
	wctx     context.Context                 // the request's values only, for reads and writes
	sock     *socketCtx                      // under ctx: cancels it
	async    atomic.Pointer[context.Context] // ctx marked dbctx.Async, made on first use
	scope    *dbctx.Scope                    // the socket's scope (sync style)
	pool     *dbctx.Pool                     // scope's
	release  func()                          // ends the socket's context and scopes: see Handler.end
	wg       sync.WaitGroup                  // goroutines started with Go, async receives
	lastMsg  atomic.Int64                    // monotonic() of the last message read
	lastPing int64                           // monotonic() of the last ping; the keepalive goroutine's
	closing  atomic.Bool
	sent     atomic.Int32 // the close status Close sent first, if any
	ended    atomic.Int32 // who ended the socket first: endClient, …; 0 while it lives

	dispatch dispatch               // readConcurrent's
	phase    atomic.Int32           // readInline's: phaseReading, …
	ahead    *readAhead             // the queue of the reader readOn started
	paused   atomic.Bool            // reading stopped by the server: see pause
	pauses   atomic.Uint32          // times paused
	out      atomic.Pointer[outbox] // sync callbacks' context, made on first use

	// Write state: the writes under way and those finished (write), and
	// the write watchdog's view of them (stalled: the keepalive
	// goroutine's alone).
	writing   atomic.Int32
	written   atomic.Uint32
	seen      uint32 // written at stallFrom
	stallFrom int64  // monotonic() of the look that found writes under way and no progress since; 0: none

	mu       sync.Mutex
	accepted bool
	finished bool                    // disconnecting: Go starts nothing
	pending  []func(context.Context) // Go calls made before accept
	member   *groups.Member          // made by the first Join
	ev       *events                 // made by the first event; its member's goroutine's

	cb  sync.Mutex // one sync callback at a time, where events may come (see lockCallbacks)
	vmu sync.Mutex // AddValues, one at a time

	// evGate is held (read) by an event from the check that its group is
	// still the socket's to the start of its Event callback; Leave waits
	// for it (write), so that an event it did not stop has begun.
	evGate sync.RWMutex
}

// lockCallbacks makes a sync callback the only one of the socket running,
// where the handler has a layer (events come on their own goroutine), and
// reports whether it locked s.cb, which the caller then unlocks.
// Elsewhere the read loop runs them one at a time itself, and it costs
// nothing.
func (s *Session) lockCallbacks() bool {
	if s.h.opts.Layer == nil || s.h.async {
		return false
	}
	s.cb.Lock()
	return true
}

// Join makes the socket a member of group: the Event callback gets the
// group's messages, and its gaps, until Leave or the disconnect. Once Join
// returns, a message sent to group reaches the socket (the layer's engine
// has subscribed, which may take a round trip). It needs Options.Layer.
// ErrClosed means the socket joins nothing: it is disconnecting, it was
// closed (by Close, Shutdown, or for falling behind its groups:
// StatusTooSlow), or the layer is closed.
func (s *Session) Join(ctx context.Context, group string) error {
	l := s.h.opts.Layer
	if l == nil {
		return ErrNoLayer
	}
	s.mu.Lock()
	if s.finished || s.closed.Load() || s.closing.Load() {
		// Closed (by Close, or Shutdown's close under way): its events
		// would be dropped, and the member kept for nothing until the end.
		s.mu.Unlock()
		return ErrClosed
	}
	if s.member == nil {
		var o groups.MemberOptions
		if s.h.opts.Member != nil {
			o = *s.h.opts.Member
		}
		onSlow := o.OnSlow
		o.OnSlow = func() {
			if onSlow != nil {
				// On the member's goroutine, where nothing else would
				// recover it: a panic is the hook's failure, as
				// OnCallback's is (1011, logged).
				if err := guard(func() error { onSlow(); return nil }); err != nil {
					s.h.fail(s, "OnSlow", err)
					return
				}
			}
			s.closeOrDue(StatusTooSlow, "too slow for its groups")
		}
		pool := s.scope.Pool()
		s.member = l.NewMember(func(e groups.Event) { s.h.event(pool, s, e) }, &o)
	}
	m := s.member
	s.mu.Unlock()
	err := m.Join(ctx, group)
	if errors.Is(err, groups.ErrClosed) {
		return ErrClosed // one error for one meaning
	}
	return err
}

// Leave takes the socket out of group: once it returns, no event of
// group reaches it, those already sent to it included (an Event callback
// that began before goes on). The disconnect leaves every group.
func (s *Session) Leave(group string) {
	s.mu.Lock()
	m := s.member
	s.mu.Unlock()
	if m != nil {
		m.Leave(group)
		// An event that found its group still the socket's, before
		// m.Leave, has begun its Event callback once this returns.
		s.evGate.Lock()
		//lint:ignore SA2001 a barrier: the events that hold it have begun
		s.evGate.Unlock()
	}
}

// eventCurrent reports whether the event the member's goroutine has in
// hand is still the socket's, once it has waited its turn: Leave (in a
// callback before it, or in Connect before the socket opened) takes no
// event from the member's hands.
func (s *Session) eventCurrent() bool {
	s.mu.Lock()
	m := s.member
	s.mu.Unlock()
	return m.Current()
}

// Groups returns the groups the socket is in.
func (s *Session) Groups() []string {
	s.mu.Lock()
	m := s.member
	s.mu.Unlock()
	if m == nil {
		return nil
	}
	return m.Groups()
}

// leaveGroups leaves every group, at the disconnect, and waits for an
// event callback under way. s.finished is set, so Join makes no member.
func (s *Session) leaveGroups() {
	s.mu.Lock()
	s.finished = true
	m := s.member
	s.mu.Unlock()
	if m != nil {
		m.Close()
	}
}

// Request returns the upgrade request: its URL, headers and context
// values (user, tenant). Do not use its Context for work after Connect:
// net/http may cancel it once the connection is hijacked; use the
// callbacks' ctx or [Session.Context].
func (s *Session) Request() *http.Request { return s.req }

// Context returns the socket's context: it carries the upgrade request's
// values and is canceled when the socket disconnects or the handler shuts
// down. It is marked dbctx.Async: database work from it goes through
// dbctx.Do.
func (s *Session) Context() context.Context {
	if p := s.async.Load(); p != nil {
		return *p
	}
	// Made on first use: a sync socket that never asks pays nothing. Two
	// racing first uses get equivalent contexts.
	ctx := dbctx.Async(s.ctx)
	if s.async.CompareAndSwap(nil, &ctx) {
		return ctx
	}
	return *s.async.Load()
}

// AddValues gives the socket's context the values f adds to it: every
// later callback of the socket (Receive, Event, Disconnect), the
// goroutines of [Session.Go], [Session.Context] and Connect's own ctx
// carry them, for the socket's life. f is called with the socket's
// values (the upgrade request's, and those added before) and returns a
// context derived from that one; only its values count. Call it in
// Connect, once the socket's user is known, to declare what the whole
// socket runs with: its tenant, whose settings every statement of its
// callbacks and group events then runs with, or the attributes of its log
// records.
//
//	Connect: func(ctx context.Context, s *wsconsumer.Session) error {
//		id, err := tenantOf(s.Request())
//		if err != nil {
//			return wsconsumer.Reject(http.StatusForbidden, "no tenant")
//		}
//		s.AddValues(func(ctx context.Context) context.Context { return tenant.With(ctx, id) })
//		return nil
//	},
//
// It is safe to call from any goroutine; a callback under way when it is
// called sees the values before or after it.
func (s *Session) AddValues(f func(ctx context.Context) context.Context) {
	s.vmu.Lock()
	defer s.vmu.Unlock()
	v := f(*s.sock.values.Load())
	s.sock.values.Store(&v)
}

// Subprotocol returns the subprotocol negotiated at accept, or "".
func (s *Session) Subprotocol() string {
	c := s.conn.Load()
	if c == nil {
		return ""
	}
	return c.Subprotocol()
}

// Send writes one message. It blocks until the message is written or the
// socket is closed; a socket whose writes stall for the write timeout is
// closed (a slow client never holds up others). ctx is checked before the
// write only: the write itself runs under the socket's own context, so
// sending to many sockets from one request or socket is safe. Before the
// socket is accepted or after it closed, Send returns ErrClosed.
//
// In the sync style, what a Receive callback sends with its own ctx is
// written once the callback has returned and its worker slot and
// connection are released, in order: a slow client then never holds a
// database resource. Send returns nil for those at once; a write that
// fails later closes the socket. Where the socket is closed first
// ([Session.Close], from the callback or elsewhere, Shutdown), they are
// written before the close frame. An Event callback, which takes its slot
// at its first statement, has what it sends before that written at once,
// as the async style does, and what it sends from then on held so. A send
// with a callback's ctx once that
// callback has returned (from a goroutine it started) is written at once,
// or, while a later callback of the socket runs, after that one.
func (s *Session) Send(ctx context.Context, typ websocket.MessageType, data []byte) error {
	return s.send(ctx, typ, data, false)
}

// send is Send; owned says data is the caller's no more, so a deferred
// send need not copy it.
func (s *Session) send(ctx context.Context, typ websocket.MessageType, data []byte, owned bool) error {
	c := s.conn.Load()
	if c == nil || s.closed.Load() || s.closing.Load() || s.sock.Err() != nil {
		// Not accepted, or closed: by the server (closing), or by the
		// client or the network, which ended the socket's context.
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.h.async {
		// No outbox to look for: async callbacks' sends are written at once.
	} else if ob := s.outboxOf(ctx); ob != nil {
		if ob.add(typ, data, owned) {
			return nil
		}
		// Written at once, but after what a flush under way writes: the
		// callback's sends keep their order.
		ob.wmu.Lock()
		defer ob.wmu.Unlock()
	}
	if err := s.write(c, typ, data); err != nil {
		if s.sock.Err() != nil || s.closing.Load() || answer.IsGone(err) {
			// The socket closed under the write: by the server, or by the
			// client or the network (a reset, a broken pipe) before its
			// reader noticed.
			return fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return err
	}
	return nil
}

// outboxOf returns the outbox of s that ctx is or carries, or nil.
func (s *Session) outboxOf(ctx context.Context) *outbox {
	ob, ok := ctx.(*outbox) // a callback's ctx passed on as it is: no lookup
	if !ok {
		ob, ok = ctx.Value(outboxKey).(*outbox)
	}
	if ok && ob.s == s {
		return ob
	}
	return nil
}

func (s *Session) write(c *websocket.Conn, typ websocket.MessageType, data []byte) error {
	// coder/websocket closes a socket whose write context ends. The
	// caller's context may belong to another socket or request, and a
	// context with the write timeout for every write costs a timer and a
	// registration per message, so the write runs under a context that
	// never ends, and the handler's keepalive goroutine closes a socket
	// whose writes stall (see stalled). A disconnect closes the socket,
	// which ends the write too. Counting writes costs no clock read.
	s.writing.Add(1)
	err := c.Write(s.wctx, typ, data)
	s.written.Add(1)
	s.writing.Add(-1)
	return err
}

// stalled reports whether the socket has had writes under way, none of
// them finishing, since a look at least timeout before now. The
// keepalive goroutine alone calls it, every WriteTimeout/8 (see
// keepalive): a write that stalls is first seen within an eighth of the
// timeout, so the socket is closed after 1 to 1.25 times it.
func (s *Session) stalled(now int64, timeout time.Duration) bool {
	if s.writing.Load() == 0 {
		s.stallFrom = 0
		return false
	}
	if w := s.written.Load(); s.stallFrom == 0 || w != s.seen {
		s.seen, s.stallFrom = w, now // under way since this look at most
		return false
	}
	return now-s.stallFrom >= int64(timeout)
}

// SendText writes one text message; see [Session.Send].
func (s *Session) SendText(ctx context.Context, text string) error {
	return s.send(ctx, websocket.MessageText, []byte(text), true)
}

// SendJSON writes v as one JSON text message; see [Session.Send].
func (s *Session) SendJSON(ctx context.Context, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return s.send(ctx, websocket.MessageText, data, true)
}

// Close closes the socket with a status code and a reason (sent to the
// client; keep internals out of it), cut to the 123 bytes a close frame
// holds, at a character boundary. It first writes
// what a sync callback's Send accepted and holds (see [Session.Send]),
// bounded by the write timeout, then performs the closing handshake,
// which coder/websocket bounds at 5s for each side, and then cancels the
// socket's context (Session.Context, and the ctx of the callbacks): work
// still under way for the socket stops. Disconnect runs after. Sends
// after Close return ErrClosed, and no Receive or Event callback starts
// after it (a message read, or an event come, meanwhile is dropped). The
// first Close decides the status sent: a later one returns ErrClosed.
// 1005 (no status) sends a close frame with no status, which the client
// reads as 1005 and echoes (Disconnect gets 1005). A code no close frame
// may carry (below 1000, 1004, 1006, 1015 to 2999, 5000 and above) drops
// the connection with no frame: the client sees an abnormal closure,
// Disconnect gets -1, and Close returns the error.
//
// In the sync style, while a callback of the socket is under way (Close
// called from it, typically), Close returns at once (nil, or the error
// of a code no close frame may carry) and the writes and the handshake
// go on on a goroutine of their own: the callback's worker slot is not
// held while a client that does not read, or never answers the close,
// takes its time. (An async callback that calls Close
// inside dbctx.Do holds its slot for it: call it outside.)
func (s *Session) Close(code websocket.StatusCode, reason string) error {
	c := s.conn.Load()
	if c == nil {
		return ErrClosed
	}
	if s.closed.Swap(true) {
		// Closed already: the first Close's status is the one sent,
		// though its handshake may go on on a goroutine of its own (a
		// callback that closes its socket, then fails).
		return ErrClosed
	}
	// Now, not on close's goroutine: an ErrClosed that the callback
	// meets next is the server's close, not the client going away.
	s.ended.CompareAndSwap(0, endServer)
	reason = closeReason(reason)
	if o := s.out.Load(); o != nil && !s.h.async && o.isOpen() {
		go s.close(c, code, reason)
		if !sendableCode(code) && code != websocket.StatusNoStatusRcvd {
			// What close meets on its own goroutine, as Close promises
			// (1005 goes out as a close frame with no status).
			return fmt.Errorf("wsconsumer: close status %d cannot be sent: the connection is dropped with no close frame", int(code))
		}
		return nil
	}
	return s.close(c, code, reason)
}

// close is Close, on the goroutine that waits for it.
func (s *Session) close(c *websocket.Conn, code websocket.StatusCode, reason string) error {
	s.ended.CompareAndSwap(0, endServer)
	flushed := true
	if o := s.out.Load(); o != nil {
		// Before closing is set, so that the write watchdog still looks
		// at the socket: a client that takes nothing holds no Close.
		flushed = o.flush()
	}
	if flushed && sendableCode(code) {
		// Before the frame goes out, for the read that meets the peer's
		// answer (closeStatus). Where a held reply's write failed (the
		// watchdog cut the connection), no frame goes out either: the
		// status is then the one read, or -1.
		s.sent.CompareAndSwap(0, int32(code))
	}
	s.closing.Store(true)
	err := c.Close(code, reason)
	s.sock.cancel()
	return err
}

// maxCloseReason is what a close frame's reason holds: its payload, a
// control frame's 125 bytes, less the status's 2.
const maxCloseReason = 123

// closeReason returns reason cut to maxCloseReason bytes, at a character
// boundary: coder/websocket refuses a longer one, and then sends no close
// frame at all.
func closeReason(reason string) string {
	if len(reason) <= maxCloseReason {
		return reason
	}
	i := maxCloseReason
	for i > 0 && !utf8.RuneStart(reason[i]) {
		i--
	}
	return reason[:i]
}

// sendableCode reports whether a close frame may carry code (RFC 6455,
// 7.4; coder/websocket refuses the others, and sends no frame).
func sendableCode(code websocket.StatusCode) bool {
	switch {
	case code == 1004 || code == websocket.StatusNoStatusRcvd || code == websocket.StatusAbnormalClosure:
		return false
	case code >= websocket.StatusNormalClosure && code <= websocket.StatusBadGateway:
		return true
	}
	return code >= 3000 && code <= 4999
}

// Go runs fn in a goroutine tied to the socket: its ctx is canceled when
// the socket disconnects, and Disconnect runs only after fn has returned.
// ctx is marked dbctx.Async, so fn reaches the database through dbctx.Do.
// Called from Connect, fn starts once the socket is accepted (and never
// if it is not); called once the socket is disconnecting, it starts
// nothing. Go may be called from any goroutine.
func (s *Session) Go(fn func(ctx context.Context)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.finished:
	case !s.accepted:
		s.pending = append(s.pending, fn)
	default:
		s.start(fn)
	}
}

// finish makes Go start nothing more, so the wait for its goroutines
// cannot race a new one.
func (s *Session) finish() {
	s.mu.Lock()
	s.finished = true
	s.pending = nil
	s.mu.Unlock()
}

// accept publishes the accepted connection and starts what Connect asked
// to run, and closes the socket where that was asked meanwhile (see
// closeOrDue).
func (s *Session) accept(c *websocket.Conn) {
	s.conn.Store(c)
	s.mu.Lock()
	s.accepted = true
	for _, fn := range s.pending {
		s.start(fn)
	}
	s.pending = nil
	close(s.opened)
	due, why := s.closeDue, s.closeWhy
	s.mu.Unlock()
	if due != 0 {
		go s.Close(due, why)
	}
}

// closeOrDue closes the socket with code; where it is not accepted yet
// (it fell behind its groups while Connect ran), accept closes it once it
// is.
func (s *Session) closeOrDue(code websocket.StatusCode, reason string) {
	s.mu.Lock()
	if !s.accepted && s.conn.Load() == nil {
		s.closeDue, s.closeWhy = code, reason
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.Close(code, reason)
}

func (s *Session) start(fn func(ctx context.Context)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.h.recoverLog(s, "goroutine")
		fn(s.Context())
	}()
}

func (s *Session) touch() { s.lastMsg.Store(monotonic()) }

// pause marks the socket's reading stopped by the server, which reads
// no more until it has handled what it read (a full read-ahead queue, or
// InFlight messages in flight), or resumed. A pong comes only to a
// socket that reads: one that does not come while the socket was paused
// does not close it (see Session.ping). A client that goes away is
// noticed by a read that fails, and, while its socket is paused, by the
// TCP state of the connection (see Handler.tick).
func (s *Session) pause(on bool) {
	if on {
		s.pauses.Add(1)
	}
	s.paused.Store(on)
}

// closeStatus is the close status of the handshake that ended a read with
// err. When Close ran the handshake itself, while nobody was reading (a
// message handled inline), the read that follows only finds the socket
// closed; the peer answered with the status Close sent, as peers do.
// Where the read failed on what the client sent (a message past
// ReadLimit, a frame that breaks the protocol), coder/websocket has sent
// a close frame itself (1009, 1002) and returned a plain error, or, for
// a few, sent nothing: Close completes the handshake (sending 1002 where
// nothing was sent, nothing more where something was) and the client's
// answer tells its status (-1 where it cannot be read: the bad frame's
// payload, unread, comes before it).
func (s *Session) closeStatus(err error) websocket.StatusCode {
	code := websocket.CloseStatus(err)
	if code != -1 {
		return code
	}
	if sent := s.sent.Load(); sent != 0 {
		return websocket.StatusCode(sent)
	}
	if err == nil || answer.IsGone(err) || s.closing.Load() {
		return -1 // the connection broke, or the server closed it without a handshake
	}
	const violation = websocket.StatusProtocolError
	if cerr := s.conn.Load().Close(violation, "protocol error"); cerr != nil {
		if code := websocket.CloseStatus(cerr); code != -1 {
			return code // the status the library sent, which the client echoed
		}
		// No echo read (the client did not answer in time, or the bad
		// frame's unread payload came first): the status the library
		// sent, told by its error.
		if strings.Contains(err.Error(), "read limited at") {
			return websocket.StatusMessageTooBig
		}
	}
	return violation
}

// epoch starts the clock of [monotonic].
var epoch = time.Now()

// monotonic is the time since epoch in nanoseconds: one read of the
// monotonic clock, where time.Now reads the wall clock too. It runs for
// every message read and written.
func monotonic() int64 { return int64(time.Since(epoch)) }

// outboxKey is the context key of an outbox (a pointer: see dbctx's).
var outboxKey = &ctxKey{"wsconsumer.outbox"}

type ctxKey struct{ name string }

// outbox holds what a sync callback sends until its slot is released (an
// Event's, from its first statement on: before it, it holds no slot). It
// is the callback's context, so that Send finds it. A socket handles one
// message at a time, so it has one outbox, reused for every message: a
// send with the context of a callback that has returned is written at
// once, or, while a later callback runs, after that one.
type outbox struct {
	context.Context
	s         *Session
	wmu       sync.Mutex // held while a flush writes: Close's close frame, and sends at once, come after
	broken    bool       // a flush's write failed (the socket is cut); under wmu
	mu        sync.Mutex
	open      bool
	untilSlot bool // an Event's: written at once until its scope holds a slot (no Options.Pools)
	msgs      []message
}

// outbox returns the socket's outbox, open for a callback of kind.
func (s *Session) outbox(kind CallbackKind) *outbox {
	o := s.out.Load()
	if o == nil {
		o = &outbox{Context: s.ctx, s: s}
		s.out.Store(o) // the callbacks' goroutine alone makes it; Close reads it
	}
	o.mu.Lock()
	// With Options.Pools, the slots of their scopes would have to be
	// asked too: an Event's sends are held from its start there.
	o.open, o.untilSlot = true, kind == CallbackEvent && len(s.h.opts.Pools) == 0
	o.mu.Unlock()
	return o
}

func (o *outbox) Value(key any) any {
	if key == any(outboxKey) {
		return o
	}
	return o.Context.Value(key)
}

// AfterFunc forwards to the socket's context (through the scope's), so
// that context.AfterFunc and the cancelable children of a callback's
// context start no goroutine each.
func (o *outbox) AfterFunc(f func()) func() bool { return afterfunc.Forward(o.Context, f) }

// add queues a message (a copy of data, unless owned), or reports false
// once the callback is over (its ctx was kept past it) or, for an Event,
// while it holds no slot: the caller then writes at once.
func (o *outbox) add(typ websocket.MessageType, data []byte, owned bool) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.open || o.untilSlot && len(o.msgs) == 0 && !lazyslot.Holds(o.s.scope) {
		return false
	}
	if !owned {
		data = append([]byte(nil), data...)
	}
	o.msgs = append(o.msgs, message{typ, data})
	return true
}

// isOpen reports whether the outbox is open: a callback of its socket is
// under way.
func (o *outbox) isOpen() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.open
}

// flush closes the outbox and writes what it holds, in order; the first
// failed write (which closes the socket) ends it. Calls after the first
// do nothing. Close calls it too, from any goroutine, so that what Send
// accepted goes out before the close frame.
//
// It reports whether all that it and the flushes before it held was
// written: a Close that waited for another flush (the callback's own,
// where Close ran elsewhere) learns that its write failed too, and
// sends no close frame.
func (o *outbox) flush() bool {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	o.mu.Lock()
	o.open = false
	msgs := o.msgs
	// The next callback reuses the array: nothing adds to a closed outbox,
	// and the next callback opens it once this flush is over.
	o.msgs = msgs[:0]
	o.mu.Unlock()
	if len(msgs) == 0 || o.broken {
		clear(msgs)
		return !o.broken
	}
	c := o.s.conn.Load()
	for _, m := range msgs {
		if o.s.write(c, m.typ, m.data) != nil {
			o.broken = true
			break
		}
	}
	clear(msgs)
	return !o.broken
}
