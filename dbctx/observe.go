package dbctx

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Observing the pool: what its hooks are told (Options.OnWait, OnPin,
// OnDo), and what a pgx tracer is told of the statements dbscope sends
// before a statement of a scope (PreludeOf).
//
// A pgx tracer set on the connection's config (pgx.ConnConfig.Tracer)
// sees every statement of a scope exactly once: pgx tells it of those it
// runs as they are, and dbscope tells it itself, as pgx would, of those it
// sends after a prelude in one pgconn batch, which pgx's tracer would not
// see. A prelude sent in a round trip of its own (before raw access,
// COPY, a transaction begun apart) is told of as a statement of its own,
// its text dbscope's statements, with no arguments (the settings' values
// stay out). In the simple_protocol exec mode pgx itself tells the tracer
// of the batch that carries a prelude and a statement.

// Wait is a caller's wait for a worker slot, as [Options.OnWait] is told
// of it.
type Wait struct {
	// Queued is false for a caller refused at once with ErrBusy (the
	// queue full, or its turn too far off at the pace the queue moves),
	// true for one that queued.
	Queued bool

	// Waited is how long the caller queued.
	Waited time.Duration

	// Err is nil when the caller got its slot, else what it gets instead:
	// ErrBusy, ErrPoolClosed, or its context's error.
	Err error
}

// Pin is a connection a scope pinned, as [Options.OnPin] is told of it.
type Pin struct {
	// Took is the time from asking for a connection to its being ready:
	// the health check, a connect by the *sql.DB, the reset an earlier
	// user left owed where OnAcquire runs, OnAcquire itself.
	Took time.Duration

	// Kept says the connection was one the pool kept since a scope gave
	// it back a moment before; else it came from the *sql.DB.
	Kept bool

	// New says the connection had not been pinned before (with pgx's
	// driver: other drivers' connections are not told apart): as a rule
	// the *sql.DB has just opened it.
	New bool

	// Checked says its socket was looked at for a dead backend; a
	// connection given back a moment before is not (see the package doc).
	Checked bool

	// Dead counts the connections found dead, and discarded, before this
	// one.
	Dead int

	// Err is the error of a pin that failed (no connection pinned):
	// ErrUnavailable, ErrMisconfigured, OnAcquire's, ctx's.
	Err error
}

// sawDead counts a connection found dead while pinning; a nil *Pin (no
// OnPin hook) counts nothing.
func (pn *Pin) sawDead() {
	if pn != nil {
		pn.Dead++
	}
}

// toldWait tells Options.OnWait of a wait.
// A slot taken (err nil) is given back if OnWait ends the goroutine
// (runtime.Goexit) before the caller holds it.
func (p *Pool) toldWait(ctx context.Context, queued bool, waited time.Duration, err error) {
	if h := p.opts.OnWait; h != nil {
		var exited func()
		if err == nil {
			exited = p.releaseSlot
		}
		p.observeHook("OnWait", func() { h(ctx, Wait{Queued: queued, Waited: waited, Err: err}) }, exited)
	}
}

// connectObserved is connect, for a scope's pin, observed for
// Options.OnPin: the caller tells it with toldPin once the connection is
// the scope's (OnPin may end the goroutine: runtime.Goexit).
func (p *Pool) connectObserved(ctx context.Context) (c *session, looked bool, pn Pin, err error) {
	start := monotonic()
	c, looked, err = p.connect(ctx, &pn)
	pn.Took = monotonic() - start
	pn.Err = err
	if err == nil {
		pn.Checked = looked
		pn.New = c.pc != nil && c.released == 0
	}
	return c, looked, pn, err
}

// toldPin tells Options.OnPin of a pin.
func (p *Pool) toldPin(ctx context.Context, pn Pin) {
	p.observeHook("OnPin", func() { p.opts.OnPin(ctx, pn) }, nil)
}

// doObserved is Pool.Do on a fresh scope, inside Options.OnDo.
// A panic in OnDo, or in its done, is logged, as one in OnWait or OnPin:
// Do goes on without what the hook would have added.
func (p *Pool) doObserved(ctx context.Context, fn func(ctx context.Context, s *Scope) error) error {
	var done func(error)
	p.observeHook("OnDo", func() {
		var hctx context.Context
		hctx, done = p.opts.OnDo(ctx)
		ctx = hctx
	}, nil)
	s := p.newScope(ctx)
	err := errGoexit // unless fn returns: it ended the goroutine (runtime.Goexit)
	defer func() {
		s.End()
		if done != nil {
			p.observeHook("OnDo", func() { done(err) }, nil)
		}
	}()
	err = s.do(&s.ctx, fn, false)
	return err
}

// errGoexit is the outcome OnDo's done is told of for a Do whose function
// ended its goroutine (runtime.Goexit: t.FailNow in a test) rather than
// return.
var errGoexit = errors.New("dbctx: Do's function called runtime.Goexit")

// A Prelude is what dbscope sends on a connection before a statement of a
// scope: the session reset that an earlier user of the connection left
// owed, the BEGIN of the [Atomic] that the statement begins, the
// set_config of the settings its context declares (see [Setting]). It goes
// in the statement's own network round trip where it can, else in one of
// its own just before.
type Prelude struct {
	Reset bool // the session reset an earlier user of the connection left owed
	Begin bool // the BEGIN of the Atomic that the statement begins

	// Settings names the settings set with set_config (or reset, where
	// the context no longer declares one the session carries); their
	// values are left out. Local says they are set for the transaction
	// only.
	Settings []string
	Local    bool

	// Queries is how many queries the prelude is. Where a pgx
	// BatchTracer is told of a batch that carries it (a batch of
	// [Scope.SendBatch], or InBatch), they are the batch's first ones.
	Queries int

	// Alone says the prelude is sent in a round trip of its own: the
	// statement the tracer is told of is the prelude itself.
	Alone bool

	// InBatch says the prelude and the statement are sent as one pgx
	// batch (the simple_protocol exec mode), of which the statement is
	// the last query: a BatchTracer is told of that batch, and no
	// QueryTracer of the statement.
	InBatch bool
}

// PreludeOf returns the prelude of the statement that conn is starting
// to send, for a pgx tracer on conn's config to call from TraceQueryStart,
// TraceBatchStart or TraceCopyFromStart; ok is false where dbscope sends
// nothing before it, or conn is not under a [Pool]. It reads what the
// goroutine that sends the statement set: call it from that goroutine,
// before the statement is sent.
func PreludeOf(conn *pgx.Conn) (_ Prelude, ok bool) {
	if conn == nil {
		return Prelude{}, false
	}
	c, _ := conn.PgConn().CustomData()[sessionKey].(*session)
	if c == nil || c.send.p == nil {
		return Prelude{}, false
	}
	sd := &c.send
	pr := Prelude{Reset: sd.p.reset, Begin: sd.p.begin, Queries: sd.n, Alone: sd.alone, InBatch: sd.batch}
	for _, st := range sd.p.set {
		if !slices.Contains(pr.Settings, st.name) { // (role may go twice: see roleAround)
			pr.Settings = append(pr.Settings, st.name)
		}
		pr.Local = sd.p.local
	}
	return pr, true
}

// sending is what PreludeOf returns while a statement after a prelude is
// being sent on a connection: set for the tracer's start callback only.
type sending struct {
	p     *prefix
	n     int  // p's queries
	alone bool // p is sent alone
	batch bool // p and the statement go as one pgx batch
}

// preludeLen is the number of queries of p (see prefixStatements).
func (pl *Pool) preludeLen(p *prefix) int {
	n := pl.resetLen(p)
	if p.begin {
		n++
	}
	if len(p.set) > 0 {
		n++
	}
	return n
}

// traceEnd ends the trace that dbscope began of the statement under way on
// c, if any, with its outcome, and returns err.
func (c *session) traceEnd(tag pgconn.CommandTag, err error) error {
	if c.tctx != nil {
		c.qt.TraceQueryEnd(c.tctx, c.px, pgx.TraceQueryEndData{CommandTag: tag, Err: err})
		c.tctx = nil
	}
	return err
}

// traceAlone tells c's query tracer, if any, that p is sent alone, and
// returns the context to send it with and the function that ends the
// trace with the outcome.
func (pl *Pool) traceAlone(ctx context.Context, c *session, p *prefix) (context.Context, func(error)) {
	if c.qt == nil {
		return ctx, func(error) {}
	}
	var b strings.Builder
	pl.prefixStatements(p, func(sql string, _ bool) {
		if b.Len() > 0 {
			b.WriteString("; ")
		}
		b.WriteString(sql)
	})
	c.send = sending{p: p, n: pl.preludeLen(p), alone: true}
	tctx := c.qt.TraceQueryStart(ctx, c.px, pgx.TraceQueryStartData{SQL: b.String()})
	c.send = sending{}
	return tctx, func(err error) {
		c.qt.TraceQueryEnd(tctx, c.px, pgx.TraceQueryEndData{Err: err})
	}
}
