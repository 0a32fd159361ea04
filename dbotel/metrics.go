package dbotel

import (
	"context"

	"github.com/dbscope/dbscope/dbctx"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/semconv/v1.43.0/dbconv"
)

// RegisterMetrics reports p's figures as OpenTelemetry's database client
// connection metrics (semantic conventions 1.43), each with
// db.client.connection.pool.name [Options.PoolName]:
//
//	db.client.connection.count{db.client.connection.state=used|idle}
//	    the connections of p's *sql.DB: used, pinned by scopes (or used
//	    through the *sql.DB directly); idle, in the *sql.DB's idle set or
//	    kept by p for the next scope
//	db.client.connection.max               the *sql.DB's MaxOpenConns (not reported where unlimited)
//	db.client.connection.pending_requests  callers queued for a worker slot (Stats.Waiting)
//	db.client.connection.timeouts          callers refused with dbctx.ErrBusy (Stats.Busy): their
//	                                       wait timed out, or would have (the queue full, or their
//	                                       turn too far off at the pace it moves)
//
// They are read from [dbctx.Pool.Stats] and the *sql.DB's Stats when the
// reader collects, and cost nothing in between. The histogram
// db.client.connection.wait_time, each wait of a caller that queued for a
// slot (as Stats.WaitCount counts them: a caller that finds a slot free
// does not wait), is recorded by the hooks of [PoolOptions], which the
// pool must be made with. Call Unregister on the registration returned
// when the pool is closed.
func RegisterMetrics(p *dbctx.Pool, o *Options) (metric.Registration, error) {
	if p == nil {
		panic("dbotel: RegisterMetrics expects a non-nil *dbctx.Pool")
	}
	oo := o.withDefaults()
	m := oo.meter()
	count, err := dbconv.NewClientConnectionCountObservable(m)
	if err != nil {
		return nil, err
	}
	maxConns, err := dbconv.NewClientConnectionMaxObservable(m)
	if err != nil {
		return nil, err
	}
	pending, err := dbconv.NewClientConnectionPendingRequestsObservable(m)
	if err != nil {
		return nil, err
	}
	timeouts, err := dbconv.NewClientConnectionTimeoutsObservable(m)
	if err != nil {
		return nil, err
	}
	name := count.AttrClientConnectionPoolName(oo.PoolName)
	pool := metric.WithAttributeSet(attribute.NewSet(name))
	used := metric.WithAttributeSet(attribute.NewSet(name, count.AttrClientConnectionState(dbconv.ClientConnectionStateUsed)))
	idle := metric.WithAttributeSet(attribute.NewSet(name, count.AttrClientConnectionState(dbconv.ClientConnectionStateIdle)))
	// The SDK takes its own instruments, not dbconv's wrappers.
	c, mx, pr, to := count.Inst(), maxConns.Inst(), pending.Inst(), timeouts.Inst()
	return m.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		st := p.Stats()
		db := p.DB().Stats()
		// A kept connection is in use for the *sql.DB, idle for the
		// pool; read one after the other, the two may disagree by a
		// connection taken meanwhile.
		obs.ObserveInt64(c, int64(max(db.InUse-st.Kept, 0)), used)
		obs.ObserveInt64(c, int64(db.Idle+st.Kept), idle)
		if db.MaxOpenConnections > 0 {
			obs.ObserveInt64(mx, int64(db.MaxOpenConnections), pool)
		}
		obs.ObserveInt64(pr, int64(st.Waiting), pool)
		obs.ObserveInt64(to, st.Busy, pool)
		return nil
	}, c, mx, pr, to)
}
