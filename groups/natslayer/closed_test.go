package natslayer_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/nats-io/nats.go"
)

// A Subscribe that comes after Close (a Join that began before the
// layer closed, and reached the engine after) is refused with
// groups.ErrClosed, and leaves no subscription: over the caller's
// connection (New), which stays open, it made one that lived on,
// delivering nothing; over Connect's, it failed with nats.go's
// "connection closed", which wsconsumer did not read as its ErrClosed.
func TestSubscribeAfterClose(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.URL, nats.Name("own"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	owned, err := natslayer.Connect(srv.URL, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, e := range map[string]*natslayer.Engine{"New": natslayer.New(nc, nil), "Connect": owned} {
		l, err := groups.New(e, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		if err := e.Subscribe(context.Background(), "late"); !errors.Is(err, groups.ErrClosed) {
			t.Errorf("%s: Subscribe after Close: %v, want groups.ErrClosed", name, err)
		}
		if st := e.Stats(); st.Subscriptions != 0 {
			t.Errorf("%s: %d subscriptions after Close", name, st.Subscriptions)
		}
	}
	if n := nc.NumSubscriptions(); n != 0 {
		t.Fatalf("the caller's connection holds %d subscriptions after the layer closed", n)
	}
}
