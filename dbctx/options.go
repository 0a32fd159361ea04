package dbctx

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"time"
)

// Options configures a [Pool]. The zero value of every field is a useful
// default; a nil *Options means all defaults.
type Options struct {
	// MaxWorkers is the number of worker slots: how many scopes may hold a
	// connection or run inside Do at once. Default: $DBCTX_MAX_WORKERS, else
	// min(32, runtime.NumCPU()+4), as Channels' ASGI_THREADS.
	MaxWorkers int

	// MaxWaiting bounds the callers queued for a slot; one more gets
	// ErrBusy at once. Default: 8×MaxWorkers. Negative: no queue, a caller
	// that finds every slot taken gets ErrBusy at once.
	MaxWaiting int

	// WaitTimeout bounds how long a caller waits for a slot before it gets
	// ErrBusy. Default: 2s.
	WaitTimeout time.Duration

	// ConnMaxAge is how long a scope may keep its connection pinned across
	// boundaries. It mirrors Django's CONN_MAX_AGE: 0 (the default) gives
	// the connection back at every boundary; negative keeps it until the
	// scope ends.
	ConnMaxAge time.Duration

	// ResetAlways runs the session reset before every connection is given
	// back, not only when the scope did something that changes session
	// state (see [Scope] for what counts). Default: false.
	ResetAlways bool

	// ResetSQL is the statement that resets session state before a dirty
	// connection is given back. Default: [DefaultResetSQL].
	ResetSQL string

	// OnAcquire runs when a scope pins a connection, before user code sees
	// it: set per-scope state here (set_config('app.tenant', …) from a value
	// in ctx). Its error discards the connection and is returned to the
	// caller. A scope whose OnAcquire ran is reset before its connection is
	// given back.
	OnAcquire func(ctx context.Context, conn *sql.Conn) error

	// OnRelease runs before a connection is given back (to the *sql.DB,
	// or kept by the pool for the next scope: see the package doc), after
	// any open transaction was rolled back and the session reset. Its error
	// discards the connection.
	OnRelease func(ctx context.Context, conn *sql.Conn) error

	// LeakTimeout, when positive, logs once through Logger any scope that
	// keeps a connection pinned longer than this, with the stack where it
	// was pinned. Default: 0, off (capturing the stack costs about 1µs per
	// pin).
	LeakTimeout time.Duration

	// Logger receives warnings and leak reports. Default: slog.Default().
	Logger *slog.Logger
}

// DefaultResetSQL resets what a session can carry over to the next user of
// its connection. RESET ALL leaves the role alone, hence RESET ROLE; DISCARD
// ALL is avoided because it drops prepared statements that pgx caches.
const DefaultResetSQL = "RESET ALL; RESET ROLE; SELECT pg_advisory_unlock_all(); DISCARD TEMP; UNLISTEN *; CLOSE ALL"

// EnvMaxWorkers names the environment variable read for the default
// [Options.MaxWorkers].
const EnvMaxWorkers = "DBCTX_MAX_WORKERS"

func (o *Options) withDefaults() Options {
	var c Options
	if o != nil {
		c = *o
	}
	if c.MaxWorkers < 0 {
		panic("dbctx: New expects MaxWorkers >= 0")
	}
	if c.WaitTimeout < 0 {
		panic("dbctx: New expects WaitTimeout >= 0")
	}
	if c.LeakTimeout < 0 {
		panic("dbctx: New expects LeakTimeout >= 0")
	}
	if c.MaxWorkers == 0 {
		c.MaxWorkers = defaultMaxWorkers()
	}
	switch {
	case c.MaxWaiting == 0:
		c.MaxWaiting = 8 * c.MaxWorkers
	case c.MaxWaiting < 0:
		c.MaxWaiting = 0
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = 2 * time.Second
	}
	if c.ResetSQL == "" {
		c.ResetSQL = DefaultResetSQL
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func defaultMaxWorkers() int {
	if v := os.Getenv(EnvMaxWorkers); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			panic(fmt.Sprintf("dbctx: %s=%q, want a positive integer", EnvMaxWorkers, v))
		}
		return n
	}
	return min(32, runtime.NumCPU()+4)
}
