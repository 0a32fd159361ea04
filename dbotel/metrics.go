package dbotel

import (
	"context"
	"fmt"
	"reflect"
	"sync"

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
// Beside them, with the same pool name, what dbscope does that no
// convention names, as counters read from the same Stats:
//
//	dbscope.pool.acquired          connections pinned by scopes
//	dbscope.pool.retries           statements run again on a fresh connection
//	dbscope.pool.resets            session resets run, owed by a dirty scope
//	dbscope.pool.sequence_resets   of the resets, those that were DISCARD SEQUENCES alone (dbctx.Options.PlainWrites)
//	dbscope.pool.settings_applied  round trips that carried set_config for declared settings (dbctx.Setting)
//	dbscope.pool.rolled_back       transactions left open that a boundary rolled back
//	dbscope.pool.outcomes_unknown  COMMITs and statements whose answer was lost after they were sent (dbctx.ErrCommitUnknown)
//	dbscope.pool.leaks             scopes reported by the leak detector
//	dbscope.pool.connect_errors{dbscope.connect_error.cause=misconfigured|unavailable}
//	dbscope.pool.discarded{dbscope.discard.reason=dead|broken|canceled|tx|panic|hook|reset|raw|unresettable}
//
// They are read from [dbctx.Pool.Stats] and the *sql.DB's Stats when the
// reader collects, and cost nothing in between. The histogram
// db.client.connection.wait_time, each wait of a caller that queued for a
// slot (as Stats.WaitCount counts them: a caller that finds a slot free
// does not wait), is recorded by the hooks of [PoolOptions], which the
// pool must be made with. Call Unregister on the registration returned
// when the pool is closed. A second pool registered under the same
// PoolName on the same MeterProvider is refused (their series would be
// added together) until the first is unregistered.
func RegisterMetrics(p *dbctx.Pool, o *Options) (metric.Registration, error) {
	if p == nil {
		panic("dbotel: RegisterMetrics expects a non-nil *dbctx.Pool")
	}
	oo := o.withDefaults()
	release, err := claimPoolName(oo.MeterProvider, oo.PoolName)
	if err != nil {
		return nil, err
	}
	reg, err := registerMetrics(p, oo)
	if err != nil {
		release()
		return nil, err
	}
	return &registration{Registration: reg, release: release}, nil
}

// registered are the pool names registered on each MeterProvider: two
// pools of one name would have their series added together, unseen.
var registered struct {
	sync.Mutex
	names map[poolKey]bool
}

type poolKey struct {
	mp   any // metric.MeterProvider, compared as the value it holds
	name string
}

// claimPoolName records name as registered on mp, or fails where it is
// already; release forgets it.
func claimPoolName(mp metric.MeterProvider, name string) (release func(), err error) {
	if t := reflect.TypeOf(mp); t == nil || !t.Comparable() {
		return func() {}, nil // not a map key: not checked
	}
	k := poolKey{mp, name}
	registered.Lock()
	defer registered.Unlock()
	if registered.names[k] {
		return nil, fmt.Errorf("dbotel: pool name %q is registered already on this MeterProvider: the two pools' series would be added together; give each its own Options.PoolName", name)
	}
	if registered.names == nil {
		registered.names = map[poolKey]bool{}
	}
	registered.names[k] = true
	var once sync.Once
	return func() {
		once.Do(func() {
			registered.Lock()
			delete(registered.names, k)
			registered.Unlock()
		})
	}, nil
}

// registration is RegisterMetrics', whose Unregister frees the pool's
// name.
type registration struct {
	metric.Registration
	release func()
}

func (r *registration) Unregister() error {
	err := r.Registration.Unregister()
	r.release()
	return err
}

func registerMetrics(p *dbctx.Pool, oo Options) (metric.Registration, error) {
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
	own := make([]metric.Int64ObservableCounter, len(poolCounters))
	for i, pc := range poolCounters {
		if own[i], err = m.Int64ObservableCounter(pc.name, metric.WithDescription(pc.desc), metric.WithUnit(pc.unit)); err != nil {
			return nil, err
		}
	}
	connectErrors, err := m.Int64ObservableCounter("dbscope.pool.connect_errors",
		metric.WithDescription("Connects that failed: misconfigured (dbctx.ErrMisconfigured) or unavailable (dbctx.ErrUnavailable)."),
		metric.WithUnit("{error}"))
	if err != nil {
		return nil, err
	}
	discarded, err := m.Int64ObservableCounter("dbscope.pool.discarded",
		metric.WithDescription("Connections discarded (closed, never reused), by reason."),
		metric.WithUnit("{connection}"))
	if err != nil {
		return nil, err
	}
	withAttr := func(k, v string) metric.MeasurementOption {
		return metric.WithAttributeSet(attribute.NewSet(name, attribute.String(k, v)))
	}
	misconfigured, unavailable := withAttr(attrConnectCause, "misconfigured"), withAttr(attrConnectCause, "unavailable")
	reasons := map[string]metric.MeasurementOption{}
	for reason := range (dbctx.Discards{}).All() {
		reasons[reason] = withAttr(attrDiscardReason, reason)
	}
	// The SDK takes its own instruments, not dbconv's wrappers.
	c, mx, pr, to := count.Inst(), maxConns.Inst(), pending.Inst(), timeouts.Inst()
	insts := []metric.Observable{c, mx, pr, to, connectErrors, discarded}
	for _, inst := range own {
		insts = append(insts, inst)
	}
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
		for i, pc := range poolCounters {
			obs.ObserveInt64(own[i], pc.n(&st), pool)
		}
		obs.ObserveInt64(connectErrors, st.Misconfigured, misconfigured)
		obs.ObserveInt64(connectErrors, st.Unavailable, unavailable)
		for reason, n := range st.Discarded.All() {
			obs.ObserveInt64(discarded, n, reasons[reason])
		}
		return nil
	}, insts...)
}

// The attributes of dbscope's own counters.
const (
	attrConnectCause  = "dbscope.connect_error.cause"
	attrDiscardReason = "dbscope.discard.reason"
)

// poolCounters are dbscope's own counters of RegisterMetrics without an
// attribute but the pool's name.
var poolCounters = []struct {
	name, desc, unit string
	n                func(*dbctx.Stats) int64
}{
	{"dbscope.pool.acquired", "Connections pinned by scopes.", "{connection}",
		func(s *dbctx.Stats) int64 { return s.Acquired }},
	{"dbscope.pool.retries", "Statements run again on a fresh connection.", "{statement}",
		func(s *dbctx.Stats) int64 { return s.Retries }},
	{"dbscope.pool.resets", "Session resets run, owed by a dirty scope.", "{reset}",
		func(s *dbctx.Stats) int64 { return s.Resets }},
	{"dbscope.pool.sequence_resets", "Of the resets, those that were DISCARD SEQUENCES alone: the scope's writes left only sequence state.", "{reset}",
		func(s *dbctx.Stats) int64 { return s.SequenceResets }},
	{"dbscope.pool.settings_applied", "Round trips that carried set_config for the settings units of work declare (dbctx.Setting).", "{round_trip}",
		func(s *dbctx.Stats) int64 { return s.Settings }},
	{"dbscope.pool.outcomes_unknown", "COMMITs, and statements outside a transaction, whose connection failed after they were sent and before their answer (dbctx.ErrCommitUnknown).", "{statement}",
		func(s *dbctx.Stats) int64 { return s.OutcomesUnknown }},
	{"dbscope.pool.rolled_back", "Transactions left open that a boundary rolled back.", "{transaction}",
		func(s *dbctx.Stats) int64 { return s.RolledBack }},
	{"dbscope.pool.leaks", "Scopes reported by the leak detector (dbctx.Options.LeakTimeout).", "{scope}",
		func(s *dbctx.Stats) int64 { return s.Leaks }},
}
