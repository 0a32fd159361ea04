package dbtest

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
)

// Logs records what a logger is told, for tests that count log records.
type Logs struct {
	mu   sync.Mutex
	recs []Record
}

// Record is one record a [Logs] logger was told, its attributes
// flattened (a group's as group.key) and formatted with %v.
type Record struct {
	Level slog.Level
	Msg   string
	Attrs map[string]string
}

// NewLogs returns a logger of every level whose records l keeps.
func NewLogs() (*Logs, *slog.Logger) {
	l := &Logs{}
	return l, slog.New(&logsHandler{l: l})
}

// Records returns the records kept so far.
func (l *Logs) Records() []Record {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Record(nil), l.recs...)
}

// Count returns the number of records of level whose message starts with
// prefix.
func (l *Logs) Count(level slog.Level, prefix string) int {
	n := 0
	for _, r := range l.Records() {
		if r.Level == level && strings.HasPrefix(r.Msg, prefix) {
			n++
		}
	}
	return n
}

// AtLeast returns the records of level or above.
func (l *Logs) AtLeast(level slog.Level) []Record {
	var out []Record
	for _, r := range l.Records() {
		if r.Level >= level {
			out = append(out, r)
		}
	}
	return out
}

// String lists the records, one a line, for failure messages.
func (l *Logs) String() string {
	var b strings.Builder
	for _, r := range l.Records() {
		fmt.Fprintf(&b, "%s %s %v\n", r.Level, r.Msg, r.Attrs)
	}
	return b.String()
}

type logsHandler struct {
	l      *Logs
	attrs  []slog.Attr // from WithAttrs, keys already prefixed
	prefix string      // from WithGroup
}

func (h *logsHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *logsHandler) Handle(_ context.Context, r slog.Record) error {
	rec := Record{Level: r.Level, Msg: r.Message, Attrs: map[string]string{}}
	for _, a := range h.attrs {
		addAttr(rec.Attrs, "", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		addAttr(rec.Attrs, h.prefix, a)
		return true
	})
	h.l.mu.Lock()
	h.l.recs = append(h.l.recs, rec)
	h.l.mu.Unlock()
	return nil
}

func addAttr(m map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		for _, g := range v.Group() {
			addAttr(m, prefix+a.Key+".", g)
		}
		return
	}
	m[prefix+a.Key] = fmt.Sprint(v.Any())
}

func (h *logsHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append([]slog.Attr(nil), h.attrs...)
	for _, a := range as {
		c.attrs = append(c.attrs, slog.Attr{Key: h.prefix + a.Key, Value: a.Value})
	}
	return &c
}

func (h *logsHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.prefix = h.prefix + name + "."
	return &c
}
