package natslayer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
)

// Connect dials NATS at url (nats.Connect's: one URL or several, comma
// separated) for an engine of its own, which Close closes. The
// connection reconnects forever, with backoff from 100ms to 5s and
// jitter; publishes while it is down go into a reconnect buffer of
// Options.ReconnectBuffer bytes, and past it fail; its disconnections,
// reconnections and slow subscriptions are logged. Options.NATSOptions
// come last and may change any of this. Connect fails where the first
// connection does.
func Connect(url string, opts *Options) (*Engine, error) {
	o := withDefaults(opts)
	log := o.Logger
	nopts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(backoff),
		nats.ReconnectBufSize(o.ReconnectBuffer),
		nats.DisconnectErrHandler(func(nc *nats.Conn, err error) {
			if nc.IsClosed() {
				return // nats.go calls it at Close too
			}
			log.Warn("natslayer: disconnected from NATS; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("natslayer: reconnected to NATS", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			// A slow consumer's gap comes from its count of drops, in
			// order with its deliveries (see subscription.countDrops).
			if errors.Is(err, nats.ErrSlowConsumer) && sub != nil {
				log.Warn("natslayer: a subscription fell behind its pending limits", "subject", sub.Subject)
				return
			}
			log.Warn("natslayer: NATS error", "err", err)
		}),
	}
	nc, err := nats.Connect(url, append(nopts, o.NATSOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("natslayer: connecting to NATS: %w", err)
	}
	e := New(nc, &o)
	e.owned = true
	return e, nil
}

const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// backoff is the wait before the attempt-th round of reconnection
// attempts (1 the first): doubling from minBackoff to maxBackoff, give or
// take half.
func backoff(attempt int) time.Duration {
	d := maxBackoff
	if attempt < 16 {
		d = min(minBackoff<<max(attempt-1, 0), maxBackoff)
	}
	return d/2 + time.Duration(rand.Int64N(int64(d)))
}
