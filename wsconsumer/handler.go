package wsconsumer

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/answer"
	"github.com/dbscope/dbscope/internal/lazyslot"
)

// Options configures a [Handler]. The zero value of every field is a
// useful default; nil *Options means all defaults.
type Options struct {
	// Accept passes through to websocket.Accept: origin patterns,
	// subprotocols, compression. Default: nil, which refuses cross-origin
	// requests. The upgrade is verified as Accept verifies it (method,
	// headers, version, key, Origin against OriginPatterns unless
	// InsecureSkipVerify) before Connect runs or a slot is taken, and a
	// request that fails is answered as Accept answers it (400, 403, 405,
	// 426, 501) with no callback run. A pattern path.Match refuses makes
	// the handler's constructor panic.
	Accept *websocket.AcceptOptions

	// MaxSockets bounds the sockets of the handler, counted from the
	// verified upgrade (Connect included) to the end of Disconnect; past
	// it an upgrade is answered 503 with Retry-After before any callback
	// runs, counted in Stats.Refused. Every socket holds a goroutine, its
	// buffers and a file descriptor, and one that only answers pings
	// holds them for as long as it likes: the bound keeps a flood of
	// sockets from exhausting the process. Each also keeps its upgrade
	// request (Session.Request), headers included: up to the
	// http.Server's MaxHeaderBytes (1 MiB by default) each, so a server
	// of many sockets should set MaxHeaderBytes to what its clients
	// send (a few KiB). Default: 10,000; negative: no bound.
	MaxSockets int

	// ReadLimit is the largest message accepted, in bytes; a larger one
	// closes the socket with 1009 (message too big). Default: 32 KiB.
	ReadLimit int64

	// WriteTimeout bounds how long a socket's writes may stall: a client
	// that takes no message for this long while one waits to be written
	// is closed, so it never holds up the senders. It is checked every
	// WriteTimeout/8, so a stalled socket is closed within 1.25 times it.
	// Default: 10s.
	WriteTimeout time.Duration

	// PingInterval is how often a socket that sent nothing is pinged; one
	// that does not answer within the same interval is closed, unless
	// its reading was stopped meanwhile (the pong then waits behind the
	// messages it sent: see the package doc on reading). A negative
	// value disables pings. Default: 30s.
	PingInterval time.Duration

	// IdleTimeout closes with 1001 (going away) a socket that sent no
	// message for this long, pings aside. Default: 0, never: a socket
	// that only listens (a feed, a chat room being read) sends nothing
	// and must not be closed for it, and MaxSockets bounds what idle
	// sockets can hold. Set it where clients send on their own (a
	// heartbeat message every N seconds: then IdleTimeout a few times N),
	// so that a client that merely answers pings cannot hold a socket
	// forever.
	IdleTimeout time.Duration

	// InFlight is, in the async style, how many messages of one socket are
	// handled at once; reading stops while that many are in flight (see
	// the package doc on reading). 1 keeps messages in order. Default: 1. The sync style always handles
	// one at a time.
	InFlight int

	// Layer carries the messages of the groups sockets join
	// ([Session.Join]) to the Event callback. Default: nil, no groups.
	Layer *groups.Layer

	// Member bounds each socket's queue of events (see
	// groups.MemberOptions). A socket that falls behind is closed with
	// StatusTooSlow, after Member.OnSlow, if set, has run (a panic in
	// it closes with 1011 and is logged, as one in OnCallback). Default:
	// groups' defaults.
	Member *groups.MemberOptions

	// Pools are more pools (a read replica, a second database) of which
	// each socket carries a scope beside the handler's pool's, ended with
	// the socket. In the sync style a callback finds each with
	// [dbctx.Pool.From], and each gets the boundaries the handler's pool's
	// scope gets (CloseOld before and after the callback; a panic discards
	// its connection); its slot is taken on first use and freed after the
	// callback. In the async style callbacks reach them through
	// [dbctx.Pool.Do]. dbctx.From finds the handler's pool's scope.
	Pools []*dbctx.Pool

	// DisconnectTimeout bounds the context Disconnect gets. Default: 10s.
	DisconnectTimeout time.Duration

	// Logger receives the errors and panics of callbacks, which are never
	// sent to clients, at ERROR, and a misconfiguration of the handler's
	// mount once; at Debug what a client does that is no
	// failure of the server's (it hung up mid-reply, reset the
	// connection, sent no valid upgrade) and refusals (overload, an
	// outage, MaxSockets), which Stats counts. Default: slog.Default().
	Logger *slog.Logger

	// LogAttrs, if set, returns attributes added to every record logged
	// about a socket (a request id, a user, a tenant), from the upgrade
	// request's context (values only, once the socket is accepted);
	// records are logged with that context too. Default: none.
	// A panic in it is not passed on: the record is logged without
	// its attributes, with log_attrs_panic saying what it panicked with
	// (so is a panic of Logger's handler, which loses the record).
	LogAttrs func(ctx context.Context) []slog.Attr

	// OnCallback, if set, runs around each callback of a socket (Connect,
	// Receive, Event, Disconnect, those the Consumer has: see
	// [Callback]), for a tracer (package
	// dbotel starts a span there) or a meter. It runs on the goroutine
	// that runs the callback, once the callback is due (after the socket's
	// earlier callback in the sync style) and before its worker slot is
	// taken, with the context the callback would get; the callback, and
	// the wait for its slot, get the context it returns instead, which
	// must be ctx or derived from it (values added). done, if not nil, is
	// called with the callback's outcome (its error, a *dbctx.PanicError,
	// an error that says it called runtime.Goexit, or the error that
	// kept it from running, such as dbctx.ErrBusy) once
	// it has returned and its slot is released. It must not block: the
	// socket waits for it. Unset, it costs one nil check per callback.
	OnCallback func(ctx context.Context, cb Callback) (_ context.Context, done func(err error))
}

// DefaultMaxSockets is the default of [Options.MaxSockets].
const DefaultMaxSockets = 10000

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.ReadLimit < 0 || c.WriteTimeout < 0 || c.IdleTimeout < 0 || c.InFlight < 0 || c.DisconnectTimeout < 0 {
		panic("wsconsumer: negative option")
	}
	if c.ReadLimit == 0 {
		c.ReadLimit = 32 << 10
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.PingInterval == 0 {
		c.PingInterval = 30 * time.Second
	}
	if c.InFlight == 0 {
		c.InFlight = 1
	}
	if c.MaxSockets == 0 {
		c.MaxSockets = DefaultMaxSockets
	}
	checkOriginPatterns(c.Accept)
	if c.DisconnectTimeout == 0 {
		c.DisconnectTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Handler is an http.Handler that accepts websockets and drives a
// [Consumer] through connect, receive and disconnect for each. It keeps a
// registry of live sockets for [Handler.Shutdown].
type Handler struct {
	pool  *dbctx.Pool
	c     Consumer
	async bool
	opts  Options

	count counters     // see Stats
	live  atomic.Int64 // sockets admitted: see admit

	// The misconfigurations of the handler's mount, each logged once:
	// every upgrade fails on it the same way.
	noPoolLogged, inTxLogged, noHijackLogged atomic.Bool

	mu        sync.Mutex
	sessions  map[*Session]struct{}
	inConnect map[*Session]struct{} // sockets in Connect, not yet accepted; nil until the first
	closing   bool
	stopped   bool           // Shutdown's deadline has passed: what is in Connect is not accepted
	active    sync.WaitGroup // sockets under way: ServeHTTP calls, and sockets taken over from them
	stopTick  chan struct{}  // stops the keepalive goroutine; nil when none runs
}

// NewSync returns a Handler for c in the sync style (Channels'
// SyncConsumer): callbacks run one at a time, in message order, each in a
// worker slot of pool with the socket's scope, so they query through
// dbctx.From(ctx) directly; Event and Disconnect take theirs at their
// first statement, so an event passed on to the client takes none, and a
// full pool never keeps Disconnect from running. A socket waiting for a
// slot stops reading.
// With a nil pool the pool of the dbctx scope that middleware.DB put in
// the upgrade request is used.
func NewSync(pool *dbctx.Pool, c Consumer, opts *Options) *Handler {
	return newHandler(pool, c, false, opts)
}

// NewAsync returns a Handler for c in the async style (Channels'
// AsyncConsumer): callbacks hold no slot, may run concurrently up to
// Options.InFlight per socket, and reach the database only through
// dbctx.Do; direct use of dbctx.From(ctx) returns dbctx.ErrAsyncContext.
func NewAsync(pool *dbctx.Pool, c Consumer, opts *Options) *Handler {
	return newHandler(pool, c, true, opts)
}

func newHandler(pool *dbctx.Pool, c Consumer, async bool, opts *Options) *Handler {
	return &Handler{pool: pool, c: c, async: async, opts: opts.withDefaults(), sessions: map[*Session]struct{}{}}
}

// ServeHTTP runs one websocket from connect to disconnect; it returns when
// the socket is closed and Disconnect has run, or, for a socket that
// goes idle after a message that took long to handle, once it is idle:
// the goroutine that read on meanwhile goes on with the socket (see the
// package doc on reading), so that an idle socket keeps one goroutine. Shutdown waits
// for every socket either way.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.enter() {
		h.count.refused.Add(1)
		answer.HTTP(w, answer.Closed, time.Second)
		return
	}
	// What this goroutine leaves to the one that takes the socket over
	// where it hands it over (handedOver).
	handedOver := false
	defer func() {
		if !handedOver {
			h.active.Done()
		}
	}()
	// Nothing runs, and no slot is taken, for a request Accept would
	// refuse.
	if ue := verifyUpgrade(w, r, h.opts.Accept); ue != nil {
		h.count.badUpgrade.Add(1)
		h.log(r.Context(), slog.LevelDebug, "wsconsumer: not a websocket upgrade Accept takes",
			slog.String("path", r.URL.Path), slog.Int("status", ue.status), slog.Any("err", ue))
		ue.answer(w)
		return
	}
	if !h.admit() {
		h.count.refused.Add(1)
		h.log(r.Context(), slog.LevelDebug, "wsconsumer: MaxSockets reached", slog.String("path", r.URL.Path))
		answer.HTTP(w, answer.Busy, time.Second)
		return
	}
	defer func() {
		if !handedOver {
			h.live.Add(-1)
		}
	}()
	pool := h.pool
	if pool == nil {
		pool = dbctx.From(r.Context()).Pool()
	}
	if pool == nil {
		h.count.failed.Add(1)
		h.logOnce(r.Context(), &h.noPoolLogged, "wsconsumer: no pool: pass one or mount middleware.DB outside the handler",
			slog.String("path", r.URL.Path))
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	// The socket outlives the request's cancellation (hijack), not its
	// values, and none of its scopes: an idle socket holds no slot and
	// no connection, and its callbacks get the socket's scopes or none.
	values, ok := dbctx.Detach(context.WithoutCancel(r.Context()))
	if !ok {
		h.count.failed.Add(1)
		h.logOnce(r.Context(), &h.inTxLogged, "wsconsumer: websocket route inside a transaction: mount it outside middleware.Atomic",
			slog.String("path", r.URL.Path))
		http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
		return
	}
	sock := newSocketCtx(values)
	base := context.Context(sock)
	var more []*dbctx.Scope
	for _, p := range h.opts.Pools {
		var sc *dbctx.Scope
		base, sc = p.Scope(base)
		more = append(more, sc)
	}
	sctx, scope := pool.Scope(base)
	s := &Session{h: h, req: r, ctx: sctx, wctx: values, sock: sock, scope: scope, pool: pool, opened: make(chan struct{})}
	s.release = func() {
		sock.cancel()
		scope.End()
		for _, sc := range more {
			sc.End()
		}
	}
	defer func() {
		if !handedOver {
			s.release()
		}
	}()
	if !h.connecting(s) {
		// Shutdown's deadline passed since the request came in.
		h.count.refused.Add(1)
		answer.HTTP(w, answer.Closed, time.Second)
		return
	}
	defer h.connected(s) // nothing once registered

	if h.c.Connect != nil {
		// Until the upgrade, a client that leaves ends the socket, and
		// Connect's work (the request's context is not Connect's: the
		// socket's outlives it).
		stop := context.AfterFunc(r.Context(), func() { s.cancel(endClient) })
		locked := s.lockCallbacks()
		returned := false
		defer func() {
			if !returned {
				// Connect ended its goroutine (runtime.Goexit): refused
				// as a panic is.
				if locked {
					s.cb.Unlock()
				}
				stop()
				close(s.opened)
				s.leaveGroups()
				// net/http sends no response of a handler whose
				// goroutine ends: the 500 goes out whole, now.
				body := http.StatusText(http.StatusInternalServerError) + "\n"
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.Header().Set("Content-Length", strconv.Itoa(len(body)))
				w.Header().Set("Connection", "close")
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, body)
				http.NewResponseController(w).Flush()
			}
		}()
		err := h.call(s.cbCtx(), pool, &Callback{Kind: CallbackConnect, Session: s}, func(ctx context.Context) error {
			return h.c.Connect(ctx, s)
		})
		returned = true
		if locked {
			s.cb.Unlock()
		}
		stop()
		if err != nil {
			close(s.opened) // events of groups joined wait no more
			s.leaveGroups()
			h.refuse(w, r, s, err)
			return
		}
	}
	if err := s.sock.Err(); err != nil {
		// Connect accepted a socket that ended meanwhile: its client
		// left, or Shutdown's deadline passed.
		h.refuse(w, r, s, err)
		s.finish()
		close(s.opened)
		s.leaveGroups()
		h.disconnect(pool, s, -1)
		return
	}
	hw := &hijackWriter{ResponseWriter: w}
	conn, err := websocket.Accept(hw, r, h.opts.Accept)
	if err != nil {
		// Accept has answered the client. The request was verified, so
		// the hijack itself failed: the client is gone, unless a writer
		// wrapped around the handler's cannot hijack (a misconfiguration).
		if errors.Is(hw.err, http.ErrNotSupported) {
			h.count.failed.Add(1)
			h.logOnce(values, &h.noHijackLogged, "wsconsumer: the ResponseWriter cannot hijack the connection", slog.String("path", r.URL.Path), slog.Any("err", err))
		} else {
			h.count.clientGone.Add(1)
			h.log(values, slog.LevelDebug, "wsconsumer: accept failed", slog.String("path", r.URL.Path), slog.Any("err", err))
		}
		s.finish()
		close(s.opened)
		s.leaveGroups()
		h.disconnect(pool, s, -1)
		return
	}
	h.count.accepted.Add(1)
	conn.SetReadLimit(h.opts.ReadLimit)
	s.touch()
	s.raw = hw.conn
	s.accept(conn)
	h.register(s)
	returned := false
	defer func() {
		if !returned {
			// A callback ended this goroutine (runtime.Goexit), and
			// exited closed its socket.
			h.end(s, websocket.StatusInternalError)
		}
	}()
	var code websocket.StatusCode
	code, handedOver = h.readLoop(pool, s)
	returned = true
	if handedOver {
		return
	}
	h.end(s, code)
}

// end ends an accepted socket whose read loop has returned code, and
// releases what it held: from ServeHTTP, or from the goroutine that took
// the socket over (takeOver).
func (h *Handler) end(s *Session, code websocket.StatusCode) {
	defer s.conn.Load().CloseNow() // deferred: Disconnect may end the goroutine (runtime.Goexit)
	h.unregister(s)
	s.sock.cancel()
	s.finish()
	s.leaveGroups() // waits for an event callback under way
	s.wg.Wait()
	h.disconnect(s.pool, s, code)
}

// takeOver goes on with a socket whose ServeHTTP has handed it over, from
// the goroutine that read its frame f, and ends it as ServeHTTP would
// have.
func (h *Handler) takeOver(s *Session, f frame) {
	code, handedOver := websocket.StatusInternalError, false
	defer func() {
		if handedOver {
			return // to the next reader
		}
		// Deferred: a callback may end the goroutine (runtime.Goexit;
		// exited closed its socket), and Disconnect too.
		defer func() {
			s.release()
			h.live.Add(-1)
			h.active.Done()
		}()
		h.end(s, code)
	}()
	code, handedOver = h.readInline(s.pool, s, &f)
}

// cbCtx is the context callbacks get: the scope's in the sync style, the
// async-marked one otherwise.
func (s *Session) cbCtx() context.Context {
	if s.h.async {
		return s.Context()
	}
	return s.ctx
}

// call runs a callback, cb, as run does, with Options.OnCallback around
// it where set.
func (h *Handler) call(ctx context.Context, pool *dbctx.Pool, cb *Callback, fn func(ctx context.Context) error) (err error) {
	returned := false
	defer func() {
		if !returned {
			h.exited(cb)
		}
	}()
	if h.opts.OnCallback != nil {
		err = h.observed(ctx, pool, cb, fn)
	} else {
		err = h.run(ctx, pool, cb, fn)
	}
	returned = true
	return err
}

// errGoexit is what a callback that called runtime.Goexit (t.FailNow in
// a test's consumer) is logged with.
var errGoexit = errors.New("wsconsumer: the callback called runtime.Goexit")

// exited ends the socket of a callback, cb, that ended its goroutine
// (runtime.Goexit), or whose Options.OnCallback did, rather than return,
// as one that panicked: logged at ERROR, counted, the socket closed with
// 1011. Nothing can stop the goroutine's end: the goroutines that run
// callbacks end their socket in deferred calls.
func (h *Handler) exited(cb *Callback) {
	s := cb.Session
	h.count.failed.Add(1)
	h.logFailure(s, cb.Kind.String(), errGoexit)
	if c := s.conn.Load(); c != nil && !s.closing.Load() && !s.closed.Swap(true) {
		// Here, not on a goroutine of its own as Close would from a
		// callback: this one is ending, and its deferred calls end the
		// socket after. (Where the callback closed the socket before it
		// exited, that close's status stands.)
		s.close(c, websocket.StatusInternalError, "internal error")
	}
	s.sock.cancel()
}

// run runs a callback, cb: in the sync style as dbctx.Do does on the
// socket's scope (a slot, CloseOld before and after), an Event or a
// Disconnect taking its slot at its first statement only
// (internal/lazyslot: an event passed on to the client, or a Disconnect
// that cleans up in memory, takes none); in the async style directly. A panic
// becomes a *dbctx.PanicError.
func (h *Handler) run(ctx context.Context, pool *dbctx.Pool, cb *Callback, fn func(ctx context.Context) error) error {
	if !h.async {
		if len(h.opts.Pools) > 0 {
			// The other pools' boundaries inside pool's; a panic in fn
			// makes Do discard their connections too.
			inner := fn
			fn = func(ctx context.Context) error {
				h.closeOld(ctx)
				err := inner(ctx)
				h.closeOld(ctx)
				return err
			}
		}
		if cb.Kind == CallbackEvent || cb.Kind == CallbackDisconnect {
			// A Disconnect runs whatever the pool's load: one that
			// cleans up in memory takes no slot, one that queries
			// meets a refusal at its statement.
			return lazyslot.Do(ctx, cb.Session.scope, fn)
		}
		return pool.Do(ctx, func(ctx context.Context, _ *dbctx.Scope) error { return fn(ctx) })
	}
	return guard(func() error { return fn(ctx) })
}

// closeOld runs the boundary of the scopes of Options.Pools.
func (h *Handler) closeOld(ctx context.Context) {
	for _, p := range h.opts.Pools {
		if err := p.CloseOld(ctx); err != nil {
			h.log(ctx, slog.LevelWarn, "wsconsumer: cleaning up a scope", slog.Any("err", err))
		}
	}
}
