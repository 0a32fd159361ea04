package natslayer_test

import (
	"context"
	"expvar"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// Expvar publishes the engine's Stats, read at every request: a group
// joined shows as a subscription, a send published.
func TestExpvar(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	in := instances(t, srv, 1, nil)[0]
	name := "natslayer_test_" + t.Name()
	var v expvar.Var = in.engine.Expvar()
	expvar.Publish(name, v)
	ctx := context.Background()
	m := in.layer.NewMember(func(groups.Event) {}, nil)
	defer m.Close()
	if err := m.Join(ctx, "expvar"); err != nil {
		t.Fatal(err)
	}
	var got natslayer.Stats
	dbtest.Published(t, name, &got)
	if got.Subscriptions != 1 || got != in.engine.Stats() {
		t.Errorf("published %+v, Stats() %+v; want 1 subscription", got, in.engine.Stats())
	}
}
