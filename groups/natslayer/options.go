package natslayer

import (
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Options configures [New] and [Connect]. A nil *Options means defaults;
// the zero value of every field is its default.
type Options struct {
	// Prefix begins every subject: a group's is Prefix + ".g." + its
	// token (see [Subject]). Layers that share a NATS server but not
	// their groups (several apps, the tests of one) use different
	// prefixes. It is one or more '.'-separated tokens of letters,
	// digits, '-' and '_'. Default: "dbscope".
	Prefix string

	// PendingMsgs and PendingBytes bound what waits on each group's
	// subscription for delivery to this instance's members, besides the
	// message being handed over (nats.go's pending limits, which count
	// that one too, are one message and the server's max_payload more,
	// so that one instance's larger message past another's PendingBytes
	// is still told there): past
	// either, nats.go drops what arrives for that group, and its members
	// get a gap before the next message, which is always one of those
	// that wait, counted in Stats. Negative: no bound. Defaults: 10,000
	// messages and 8 MiB. MaxPayload is at most PendingBytes.
	PendingMsgs  int
	PendingBytes int

	// FlushTimeout bounds Subscribe's wait for the server to confirm the
	// subscription, where the caller's context has no deadline, and
	// Close's flush of what was published. Default: 10s.
	FlushTimeout time.Duration

	// Logger receives the connection's disconnections and reconnections
	// and the groups that fell behind. A panic of its handler loses the
	// record and ends nothing. Default: slog.Default().
	Logger *slog.Logger

	// The fields below are for Connect only: New takes the caller's
	// connection as it is.

	// Name is the connection's name, as the server's monitoring shows
	// it. Default: "dbscope-groups".
	Name string

	// ReconnectBuffer bounds, in bytes, what Publish takes while the
	// connection is down (nats.go's ReconnectBufSize): it is sent on
	// reconnection; past it, Publish fails with
	// nats.ErrReconnectBufExceeded, which Layer.Send returns. -1: no
	// buffer, every publish fails while disconnected. Default: 8 MiB.
	ReconnectBuffer int

	// NATSOptions are applied after Connect's own (a name, reconnecting
	// forever with backoff from 100ms to 5s and jitter, ReconnectBuffer,
	// handlers that log), and may override them: credentials, TLS, more
	// servers of a cluster.
	NATSOptions []nats.Option
}

const (
	defaultPrefix       = "dbscope"
	defaultPendingMsgs  = 10_000
	defaultPendingBytes = 8 << 20
	defaultFlushTimeout = 10 * time.Second
	defaultName         = "dbscope-groups"
	defaultReconnectBuf = 8 << 20
)

// withDefaults returns a copy of opts with defaults filled in, and panics
// on what is invalid.
func withDefaults(opts *Options) Options {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Prefix == "" {
		o.Prefix = defaultPrefix
	}
	if !validPrefix(o.Prefix) {
		panic("natslayer: Options.Prefix expects '.'-separated tokens of letters, digits, '-' and '_', got " + o.Prefix)
	}
	if o.PendingMsgs == 0 {
		o.PendingMsgs = defaultPendingMsgs
	}
	if o.PendingBytes == 0 {
		o.PendingBytes = defaultPendingBytes
	}
	if o.FlushTimeout < 0 {
		panic("natslayer: Options.FlushTimeout expects >= 0")
	}
	if o.FlushTimeout == 0 {
		o.FlushTimeout = defaultFlushTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Logger = safeLogger(o.Logger)
	if o.Name == "" {
		o.Name = defaultName
	}
	if o.ReconnectBuffer < -1 {
		panic("natslayer: Options.ReconnectBuffer expects -1 or more")
	}
	if o.ReconnectBuffer == 0 {
		o.ReconnectBuffer = defaultReconnectBuf
	}
	return o
}

// validPrefix reports whether p is '.'-separated non-empty tokens of
// letters, digits, '-' and '_'.
func validPrefix(p string) bool {
	for _, t := range strings.Split(p, ".") {
		if t == "" {
			return false
		}
		for i := 0; i < len(t); i++ {
			switch c := t[i]; {
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			default:
				return false
			}
		}
	}
	return true
}
