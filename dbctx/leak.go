package dbctx

import (
	"runtime"
	"strconv"
	"strings"
	"time"
)

// watchLeak arms the leak detector for a connection just pinned: if it is
// still pinned after LeakTimeout, the stack that pinned it is logged once.
func (s *Scope) watchLeak(c *session) {
	p := s.pool
	pcs := make([]uintptr, 32)
	pcs = pcs[:runtime.Callers(4, pcs)]
	pinned := time.Now()
	c.pin.leak = time.AfterFunc(p.opts.LeakTimeout, func() {
		// Counted after the report is written: a reader who sees the
		// count finds the report.
		defer p.c.leaks.Add(1)
		p.opts.Logger.Warn("dbctx: connection pinned longer than LeakTimeout",
			"pinned_for", time.Since(pinned).Round(time.Millisecond),
			"leak_timeout", p.opts.LeakTimeout,
			"pinned_at", formatStack(pcs))
	})
}

func formatStack(pcs []uintptr) string {
	var b strings.Builder
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		b.WriteString(f.Function)
		b.WriteString("\n\t")
		b.WriteString(f.File)
		b.WriteString(":")
		b.WriteString(strconv.Itoa(f.Line))
		b.WriteString("\n")
		if !more {
			break
		}
	}
	return b.String()
}
