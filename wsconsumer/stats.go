package wsconsumer

import "sync/atomic"

// Stats is a snapshot of a [Handler]'s counters. Sockets is the value
// now; the rest count since the handler was made.
type Stats struct {
	// Sockets is the number counted against Options.MaxSockets now:
	// from the verified upgrade (Connect included) to the end of
	// Disconnect. Handler.Len counts the accepted ones alone.
	Sockets  int
	Accepted int64 // upgrades accepted

	// BadUpgrade counts requests that were no websocket upgrade
	// websocket.Accept takes (a plain GET, a wrong version or key, a
	// foreign Origin): answered as Accept answers them, no callback run,
	// no slot taken.
	BadUpgrade int64
	// Refused counts upgrades answered 503 before any callback ran:
	// Options.MaxSockets reached, or the handler shutting down.
	Refused int64
	// Rejected counts upgrades that Connect refused with [Reject].
	Rejected int64

	// Busy counts the callbacks that failed because the pool was busy,
	// the database unavailable or the pool closed, or because Shutdown
	// closed their socket (canceled their work): refused 503 at Connect,
	// or closed 1013 (or 1001) later.
	Busy int64
	// Failed counts the callbacks that failed on an error of their own,
	// a panic, or a misconfiguration of the database: 500 at Connect,
	// closed 1011 later; logged at ERROR (a misconfiguration by the pool,
	// once per cause). It counts too the upgrades refused, 500 before any
	// callback, for a misconfiguration of the handler's mount (no pool,
	// under middleware.Atomic, a writer that cannot hijack): logged at
	// ERROR once per cause.
	Failed int64
	// ClientGone counts the callbacks that failed because the client had
	// gone: it hung up mid-reply (or mid-upgrade, in Connect), reset the
	// connection, closed the socket, or stopped answering (no pong,
	// writes stalled past WriteTimeout). Not a failure of the server's:
	// logged at Debug. A callback that ends because the server closed its
	// socket itself (Session.Close, IdleTimeout) is counted nowhere.
	ClientGone int64
}

type counters struct {
	accepted, badUpgrade, refused, rejected atomic.Int64
	busy, failed, clientGone                atomic.Int64
}

// Stats returns a snapshot of the handler's counters. It is safe to call
// concurrently with everything else.
func (h *Handler) Stats() Stats {
	c := &h.count
	return Stats{
		Sockets:    int(h.live.Load()),
		Accepted:   c.accepted.Load(),
		BadUpgrade: c.badUpgrade.Load(),
		Refused:    c.refused.Load(),
		Rejected:   c.rejected.Load(),
		Busy:       c.busy.Load(),
		Failed:     c.failed.Load(),
		ClientGone: c.clientGone.Load(),
	}
}

// admit counts a socket in, unless MaxSockets are in already.
func (h *Handler) admit() bool {
	if n := h.live.Add(1); h.opts.MaxSockets > 0 && n > int64(h.opts.MaxSockets) {
		h.live.Add(-1)
		return false
	}
	return true
}
