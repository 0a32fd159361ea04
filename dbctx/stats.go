package dbctx

import (
	"iter"
	"sync/atomic"
	"time"
)

// Stats is a snapshot of a [Pool]'s counters. Gauges (InUse, Waiting,
// Pinned) are current values; the rest count since the pool was made.
type Stats struct {
	MaxWorkers int // worker slots in all

	InUse   int // slots held now
	Waiting int // callers queued for a slot now
	Pinned  int // connections pinned by scopes now
	Kept    int // clean connections kept a moment for the next scope

	WaitCount    int64         // callers that had to queue for a slot
	WaitDuration time.Duration // total time spent queued

	// WaitsWithin[i] counts the waits of WaitCount that took at most
	// WaitBuckets()[i] (cumulative, as a Prometheus histogram's buckets).
	// The array's length, len(waitBounds) in its type, is that of
	// [WaitBuckets]: six, for waits of at most 1ms, 5ms, 25ms, 100ms,
	// 500ms and 2.5s; a longer wait is counted in WaitCount only.
	WaitsWithin [len(waitBounds)]int64
	Busy        int64 // callers refused with ErrBusy

	// Misconfigured counts connects that failed on a misconfiguration
	// (ErrMisconfigured: a database or role that does not exist, a wrong
	// password, an unknown host, TLS or authentication refused), and
	// Unavailable those that failed on an outage (ErrUnavailable: the
	// server down, starting up or full, the network failing).
	Misconfigured int64
	Unavailable   int64

	Acquired  int64 // connections pinned by scopes
	GivenBack int64 // connections given back clean (to the *sql.DB, or kept for the next scope)
	Retries   int64 // statements run again on a fresh connection
	Resets    int64 // session resets run (owed by a dirty scope, run before the next use of its connection)
	// SequenceResets counts, of Resets, those that were DISCARD SEQUENCES
	// alone: the scope's writes left nothing but sequence state
	// ([Options.PlainWrites]).
	SequenceResets int64
	RolledBack     int64 // transactions left open that a boundary rolled back
	// OutcomesUnknown counts the COMMITs, and the statements run outside
	// a transaction, whose connection failed after they were sent and
	// before their answer ([ErrCommitUnknown]): work PostgreSQL may have
	// committed, reported neither done nor undone.
	OutcomesUnknown int64
	Leaks           int64 // scopes reported by the leak detector

	// Settings counts the round trips that carried set_config for the
	// settings units of work declare ([Setting]) because the connection
	// did not carry exactly the unit's: with many tenants over few
	// connections, the units that found no kept connection with their
	// own. Under TransactionPooling every statement's round trip does.
	Settings int64

	Discarded Discards // connections discarded, by reason
}

// Discards counts discarded connections by reason. A discarded connection
// is closed, never reused.
type Discards struct {
	Dead     int64 // found dead by the health check before use (killed while idle)
	Broken   int64 // a connection-level error was seen while pinned
	Canceled int64 // a context was canceled mid-query (the driver closed it)
	Tx       int64 // a transaction left open could not be rolled back
	Panic    int64 // user code panicked while it was pinned
	Hook     int64 // OnAcquire or OnRelease failed
	Reset    int64 // the session reset failed
	Raw      int64 // handed to user code as itself (Scope.Conn, Scope.Pgx): never given to another scope

	// Unresettable counts sessions that held what no reset undoes (a
	// LOADed library, DISCARD ALL or DEALLOCATE ALL under pgx's statement
	// cache, setseed), closed rather than given back.
	Unresettable int64
}

// All yields each reason's name and count, in the order of the fields:
// dead, broken, canceled, tx, panic, hook, reset, raw, unresettable. The
// metrics modules label their discard counters with these names.
func (d Discards) All() iter.Seq2[string, int64] {
	return func(yield func(string, int64) bool) {
		_ = yield("dead", d.Dead) && yield("broken", d.Broken) && yield("canceled", d.Canceled) &&
			yield("tx", d.Tx) && yield("panic", d.Panic) && yield("hook", d.Hook) &&
			yield("reset", d.Reset) && yield("raw", d.Raw) && yield("unresettable", d.Unresettable)
	}
}

// Total returns the number of discarded connections.
func (d Discards) Total() int64 {
	return d.Dead + d.Broken + d.Canceled + d.Tx + d.Panic + d.Hook + d.Reset + d.Raw + d.Unresettable
}

type discardReason int8

const (
	discardDead discardReason = iota
	discardBroken
	discardCanceled
	discardTx
	discardPanic
	discardHook
	discardReset
	discardRaw
	discardUnresettable
	numDiscardReasons
)

// WaitBuckets returns the upper bounds of [Stats.WaitsWithin]: 1ms, 5ms,
// 25ms, 100ms, 500ms, 2.5s.
func WaitBuckets() []time.Duration { return append([]time.Duration(nil), waitBounds[:]...) }

var waitBounds = [...]time.Duration{
	time.Millisecond, 5 * time.Millisecond, 25 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond, 2500 * time.Millisecond,
}

// noteWait counts a wait of d in its bucket (one atomic add: only callers
// that queued pay it).
func (c *counters) noteWait(d time.Duration) {
	c.waitCount.Add(1)
	c.waitNanos.Add(int64(d))
	for i, b := range waitBounds {
		if d <= b {
			c.waitBuckets[i].Add(1)
			return
		}
	}
}

type counters struct {
	inUse, waiting, pinned       atomic.Int64
	patient                      atomic.Int64 // of waiting: under Patient
	waitCount, waitNanos, busy   atomic.Int64
	misconfigured, unavailable   atomic.Int64
	misconfigSeen                atomic.Bool // see Pool.connected
	acquired, givenBack, retries atomic.Int64
	resets, rolledBack, leaks    atomic.Int64
	seqResets                    atomic.Int64
	outcomesUnknown              atomic.Int64
	settings                     atomic.Int64
	discarded                    [numDiscardReasons]atomic.Int64
	waitBuckets                  [len(waitBounds)]atomic.Int64 // waits within waitBounds[i], not cumulative
}

// Stats returns a snapshot of the pool's counters. It is safe to call
// concurrently with everything else.
func (p *Pool) Stats() Stats {
	c := &p.c
	d := func(r discardReason) int64 { return c.discarded[r].Load() }
	var within [len(waitBounds)]int64
	var n int64
	for i := range within {
		n += c.waitBuckets[i].Load()
		within[i] = n
	}
	return Stats{
		WaitsWithin:     within,
		MaxWorkers:      p.opts.MaxWorkers,
		InUse:           int(c.inUse.Load()),
		Waiting:         int(c.waiting.Load()),
		Pinned:          int(c.pinned.Load()),
		Kept:            p.keptNow(),
		WaitCount:       c.waitCount.Load(),
		WaitDuration:    time.Duration(c.waitNanos.Load()),
		Busy:            c.busy.Load(),
		Misconfigured:   c.misconfigured.Load(),
		Unavailable:     c.unavailable.Load(),
		Acquired:        c.acquired.Load(),
		GivenBack:       c.givenBack.Load(),
		Retries:         c.retries.Load(),
		Resets:          c.resets.Load(),
		SequenceResets:  c.seqResets.Load(),
		RolledBack:      c.rolledBack.Load(),
		OutcomesUnknown: c.outcomesUnknown.Load(),
		Leaks:           c.leaks.Load(),
		Settings:        c.settings.Load(),
		Discarded: Discards{
			Dead:     d(discardDead),
			Broken:   d(discardBroken),
			Canceled: d(discardCanceled),
			Tx:       d(discardTx),
			Panic:    d(discardPanic),
			Hook:     d(discardHook),
			Reset:    d(discardReset),
			Raw:      d(discardRaw),

			Unresettable: d(discardUnresettable),
		},
	}
}
