package dbctx

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Recurring warnings.
//
// Some warnings come once per connection or per failed connect: during an
// outage every scope that ends with a dirty connection fails its session
// reset, every connect fails. One such record says what happened; a
// hundred say nothing more and bury the rest of the log. The pool's logger
// passes the first of a burst on at once, holds back the others of the
// same message, and at the end of each interval logs one record of that
// message with how many were held back ("repeated") and the first of them
// (its attributes, so its "err": the first cause of the interval). A burst
// ends with the first interval in which nothing came; the next record is
// then logged at once again. Only the messages in recurring are
// aggregated: the others are each news.

// recurring lists the messages aggregated: those logged once per
// connection or per connect.
var recurring = map[string]bool{
	msgUnavailable:                 true,
	msgDBFull:                      true,
	"dbctx: ending scope":          true, // Scope.End: the session reset or give-back failed
	"dbctx: cleaning up before Do": true,
	"dbctx: cleaning up after Do":  true,
	msgCleaning:                    true, // giveToDB: a connection's owed reset failed on its way back
	msgPoolerFull:                  true, // one per statement PgBouncer refused
	msgSlotsFull:                   true, // one per unit of work refused for want of a slot
}

// recurInterval is how long the repeats of a recurring warning are
// counted before one record reports them.
const recurInterval = 10 * time.Second

// recurHandler is the pool's slog.Handler: next, with the recurring
// messages aggregated. The handlers that With makes of it share its
// bursts.
type recurHandler struct {
	next slog.Handler
	b    *bursts
}

// bursts is the state of the recurring messages under way.
type bursts struct {
	mu       sync.Mutex
	interval time.Duration
	open     map[string]*burst // by message
}

// burst is one recurring message within its current interval.
type burst struct {
	held  int          // records held back in this interval
	first slog.Record  // the first of them
	to    slog.Handler // where it was headed
	t     *time.Timer
}

// newRecurLogger returns l with the recurring messages aggregated.
func newRecurLogger(l *slog.Logger, interval time.Duration) (*slog.Logger, *bursts) {
	b := &bursts{interval: interval, open: map[string]*burst{}}
	return slog.New(&recurHandler{next: l.Handler(), b: b}), b
}

// Enabled asks the user's handler, its panic taken for true (see handle).
func (h *recurHandler) Enabled(ctx context.Context, l slog.Level) (on bool) {
	defer func() {
		if recover() != nil {
			on = true // so that Handle tells of it
		}
	}()
	return h.next.Enabled(ctx, l)
}

func (h *recurHandler) Handle(ctx context.Context, r slog.Record) error {
	if !recurring[r.Message] || !h.b.hold(r, h.next) {
		return handle(ctx, h.next, r)
	}
	return nil
}

// handle is to.Handle(ctx, r), its panic an error: the pool logs under a
// scope's lock, and from timers' goroutines, where a panic of the user's
// handler would leave the lock held (the next Lock hangs) or end the
// process. slog drops a handler's error.
func handle(ctx context.Context, to slog.Handler, r slog.Record) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("dbctx: the Logger's handler panicked: %v", v)
		}
	}()
	return to.Handle(ctx, r)
}

func (h *recurHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &recurHandler{next: h.next.WithAttrs(as), b: h.b}
}

func (h *recurHandler) WithGroup(name string) slog.Handler {
	return &recurHandler{next: h.next.WithGroup(name), b: h.b}
}

// hold reports whether r is held back, being a repeat within its
// message's interval; where it is not, an interval starts.
func (b *bursts) hold(r slog.Record, to slog.Handler) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if u := b.open[r.Message]; u != nil {
		if u.held == 0 {
			u.first, u.to = r.Clone(), to
		}
		u.held++
		return true
	}
	msg := r.Message
	u := &burst{}
	u.t = time.AfterFunc(b.interval, func() { b.tick(msg, u) })
	b.open[msg] = u
	return false
}

// tick ends an interval of msg's: it logs the repeats held back, if any,
// and starts another interval, else ends the burst.
func (b *bursts) tick(msg string, u *burst) {
	b.mu.Lock()
	if b.open[msg] != u {
		b.mu.Unlock()
		return // flushed meanwhile
	}
	rec, to, ok := u.summary(b.interval)
	if ok {
		u.t.Reset(b.interval)
	} else {
		delete(b.open, msg)
	}
	b.mu.Unlock()
	if ok {
		handle(context.Background(), to, rec)
	}
}

// summary returns the record that reports u's repeats, and resets them;
// ok is false where there were none.
func (u *burst) summary(interval time.Duration) (rec slog.Record, to slog.Handler, ok bool) {
	if u.held == 0 {
		return rec, nil, false
	}
	rec = slog.NewRecord(time.Now(), u.first.Level, u.first.Message, u.first.PC)
	rec.AddAttrs(slog.Int("repeated", u.held), slog.Duration("within", interval))
	u.first.Attrs(func(a slog.Attr) bool {
		rec.AddAttrs(a)
		return true
	})
	to = u.to
	u.held, u.first, u.to = 0, slog.Record{}, nil
	return rec, to, true
}

// flush logs the repeats held back and ends every burst (Pool.Close).
func (b *bursts) flush() {
	type out struct {
		rec slog.Record
		to  slog.Handler
	}
	var outs []out
	b.mu.Lock()
	for msg, u := range b.open {
		u.t.Stop()
		if rec, to, ok := u.summary(b.interval); ok {
			outs = append(outs, out{rec, to})
		}
		delete(b.open, msg)
	}
	b.mu.Unlock()
	for _, o := range outs {
		handle(context.Background(), o.to, o.rec)
	}
}
