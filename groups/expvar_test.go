package groups_test

import (
	"context"
	"expvar"
	"fmt"
	"log"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// Expvar publishes the layer's Stats: expvar's handler serves them as
// JSON, read at every request, not when the var was made.
func TestExpvar(t *testing.T) {
	t.Parallel()
	l, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var v expvar.Var = l.Expvar()
	name := "groups_test_" + t.Name()
	expvar.Publish(name, v)

	ctx := context.Background()
	var r recorder
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	for _, g := range []string{"room.1", "room.2"} {
		if err := m.Join(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if err := l.Send(ctx, "room.1", []byte("hi")); err != nil {
			t.Fatal(err)
		}
	}
	// Delivered counts an event once its callback returned.
	dbtest.Eventually(t, "the member to handle the messages", func() bool { return l.Stats().Delivered == 3 })

	var got groups.Stats
	dbtest.Published(t, name, &got)
	want := groups.Stats{Groups: 2, Members: 1, Sent: 3, Delivered: 3, QueueUsage: -1}
	if got != want || got != l.Stats() {
		t.Errorf("published %+v\nwant      %+v\nStats()   %+v", got, want, l.Stats())
	}
}

// Expvar publishes the layer's counters on /debug/vars, beside expvar's
// own memstats and cmdline, for any program that serves
// http.DefaultServeMux or expvar.Handler.
func ExampleLayer_Expvar() {
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()

	expvar.Publish("dbscope_groups", layer.Expvar())
	fmt.Println(expvar.Get("dbscope_groups"))
	// Output:
	// {"Groups":0,"Members":0,"Sent":0,"Delivered":0,"Slow":0,"Gaps":0,"Reconnects":0,"QueueUsage":-1}
}
