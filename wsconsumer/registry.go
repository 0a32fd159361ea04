package wsconsumer

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/coder/websocket"
)

func (h *Handler) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.active.Add(1)
	return true
}

// connecting counts s among the sockets in Connect, which Shutdown's
// deadline cancels, unless that deadline has passed.
func (h *Handler) connecting(s *Session) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped {
		return false
	}
	if h.inConnect == nil {
		h.inConnect = map[*Session]struct{}{}
	}
	h.inConnect[s] = struct{}{}
	return true
}

// connected takes s out of the sockets in Connect, where it is not
// accepted.
func (h *Handler) connected(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.inConnect, s)
}

// register makes s, accepted, a live socket. One accepted as Shutdown
// closes the rest is closed too: with 1001, or, past Shutdown's
// deadline, at once.
func (h *Handler) register(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.inConnect, s)
	h.sessions[s] = struct{}{}
	switch {
	case h.stopped:
		go s.closeNow(endShutdown)
	case h.closing:
		go s.shutdown()
	}
	if h.stopTick == nil {
		h.stopTick = make(chan struct{})
		go h.keepalive(h.stopTick)
	}
}

func (h *Handler) unregister(s *Session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.sessions, s)
	if len(h.sessions) == 0 && h.stopTick != nil {
		close(h.stopTick)
		h.stopTick = nil
	}
}

// Len returns the number of live sockets.
func (h *Handler) Len() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.sessions)
}

func (h *Handler) snapshot() []*Session {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]*Session, 0, len(h.sessions))
	for s := range h.sessions {
		out = append(out, s)
	}
	return out
}

// keepalive pings quiet sockets, closes idle ones, closes those whose
// writes stall and has those whose message takes long read on, for every
// socket of the handler from one goroutine, which ends when no socket is
// left. It looks for the read-on every readOnDelay, and for the rest every
// WriteTimeout/8 (see Session.stalled), or more often where PingInterval
// or IdleTimeout ask for it.
func (h *Handler) keepalive(stop <-chan struct{}) {
	period := h.opts.WriteTimeout / 8
	for _, d := range []time.Duration{h.opts.PingInterval, h.opts.IdleTimeout} {
		if d > 0 && d < period {
			period = d
		}
	}
	period = max(period, time.Millisecond)
	step, readOn := period, h.readOnDelay()
	if readOn > 0 && readOn < step {
		step = max(readOn, time.Millisecond)
	}
	every := int(period / step) // ticks per keepalive look
	t := time.NewTicker(step)
	defer t.Stop()
	for n := 1; ; n++ {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		h.tick(monotonic(), readOn, n%every == 0)
	}
}

// readOnDelay is how long a message is handled inline before its socket
// reads on (see readInline): readOnAfter, or less where pings come sooner,
// since a pong is read only while the socket reads. It is 0 where messages
// are not handled inline.
func (h *Handler) readOnDelay() time.Duration {
	if h.async && h.opts.InFlight > 1 {
		return 0
	}
	d := readOnAfter
	if h.opts.PingInterval > 0 && h.opts.PingInterval < d {
		d = h.opts.PingInterval
	}
	return d
}

// tick looks at every socket: for the read-on (readOn, see readOnDelay),
// and with keep for the write watchdog, the idle timeout and pings. A
// socket being closed is left alone, so that nothing is started twice for
// it.
func (h *Handler) tick(now int64, readOn time.Duration, keep bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.sessions {
		if s.closing.Load() {
			// Being closed: nothing more is started for it, but a close
			// with a handshake first writes the replies a callback's Send
			// accepted (Session.Close), which the watchdog still bounds.
			if keep && s.stalled(now, h.opts.WriteTimeout) {
				h.log(s.wctx, slog.LevelDebug, "wsconsumer: write timeout", slog.String("path", s.req.URL.Path))
				go s.closeNow(endClient)
			}
			continue
		}
		if s.paused.Load() && peerGone(s.raw) {
			// Nothing reads the socket: its client went away behind the
			// messages it sent before (see Session.pause).
			h.log(s.wctx, slog.LevelDebug, "wsconsumer: client gone while its messages wait", slog.String("path", s.req.URL.Path))
			s.closing.Store(true)
			go s.closeNow(endClient)
			continue
		}
		quiet := time.Duration(now - s.lastMsg.Load())
		if readOn > 0 && quiet >= readOn {
			s.readOn() // lastMsg is when the message under way was read
		}
		if !keep {
			continue
		}
		switch {
		case s.stalled(now, h.opts.WriteTimeout):
			// What coder/websocket does when a write's context ends.
			h.log(s.wctx, slog.LevelDebug, "wsconsumer: write timeout", slog.String("path", s.req.URL.Path))
			s.closing.Store(true)
			go s.closeNow(endClient) // a client that takes nothing
		case h.opts.IdleTimeout > 0 && quiet >= h.opts.IdleTimeout && !s.paused.Load():
			// (A paused socket reads nothing: what its client sends waits
			// unread, and is no idleness.)
			h.log(s.wctx, slog.LevelDebug, "wsconsumer: idle timeout", slog.String("path", s.req.URL.Path))
			s.closing.Store(true)
			go s.Close(websocket.StatusGoingAway, "idle timeout")
		case h.opts.PingInterval > 0 && quiet >= h.opts.PingInterval &&
			time.Duration(now-s.lastPing) >= h.opts.PingInterval:
			s.lastPing = now
			go s.ping(h.opts.PingInterval)
		}
	}
}

// ping pings the client and closes the socket if no pong comes within
// timeout (coder/websocket's Ping only returns then), unless the socket
// was paused meanwhile: the pong then waits, unread, behind the messages
// the client sent before it (see Session.pause). The ping still keeps
// the connection alive through proxies.
func (s *Session) ping(timeout time.Duration) {
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	c := s.conn.Load()
	pauses, paused := s.pauses.Load(), s.paused.Load()
	if err := c.Ping(ctx); err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) &&
		!paused && !s.paused.Load() && s.pauses.Load() == pauses {
		s.h.log(s.wctx, slog.LevelDebug, "wsconsumer: no pong", slog.String("path", s.req.URL.Path))
		s.closeNow(endClient)
	}
}

// closeNow closes the socket without a handshake, the client being gone
// or too slow (by endClient), or Shutdown's deadline past (endShutdown),
// and cancels the socket's context: work under way for it stops, where a
// read that fails would say so only once a reader runs (none does while a
// message is handled inline).
func (s *Session) closeNow(by int32) {
	s.closing.Store(true)
	s.cancel(by)
	// coder/websocket's CloseNow only waits while a closing handshake is
	// under way (Session.Close's, Shutdown's): for a peer that never
	// echoes the close, 5s. The connection closed under it ends that
	// handshake now. Beneath TLS: tls.Conn's Close writes an alert, and
	// would wait behind a write the peer does not take.
	if c := bottom(s.raw); c != nil {
		c.Close()
	}
	s.conn.Load().CloseNow()
}

// shutdown closes the socket for Shutdown.
func (s *Session) shutdown() {
	s.ended.CompareAndSwap(0, endShutdown)
	s.Close(websocket.StatusGoingAway, "server shutting down")
}

// Shutdown closes every live socket with 1001 (going away), refuses new
// ones with 503, and waits until every socket's Disconnect has run or ctx
// ends; then it closes what is left without a handshake, cancels their
// contexts (the work under way for them stops; their Disconnect still
// runs, after Shutdown has returned), cancels the Connects under way,
// whose sockets are then not accepted (503), and returns ctx's error. Keep the
// pool open until Shutdown returns: disconnects may use it, all at once,
// within the pool's wait bounds (Options.MaxWaiting and WaitTimeout of
// dbctx): size them for the sockets you close. Those that run on after a
// deadline meet the pool closed if it is closed then (ErrPoolClosed). Call it beside http.Server.Shutdown, which does not wait for
// hijacked connections.
func (h *Handler) Shutdown(ctx context.Context) error {
	h.mu.Lock()
	h.closing = true
	h.mu.Unlock()
	for _, s := range h.snapshot() {
		go s.shutdown()
	}
	done := make(chan struct{})
	go func() {
		h.active.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		h.mu.Lock()
		h.stopped = true
		connecting := slices.Collect(maps.Keys(h.inConnect))
		h.mu.Unlock()
		for _, s := range connecting {
			s.cancel(endShutdown)
		}
		for _, s := range h.snapshot() {
			s.closeNow(endShutdown)
		}
		return ctx.Err()
	}
}
