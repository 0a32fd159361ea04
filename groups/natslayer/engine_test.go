package natslayer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/nats-io/nats.go"
)

// Every member, on either instance, gets every message once, and the
// messages of each sender in the order sent; each instance holds one
// subscription for the group, whatever its members.
func TestDelivery(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ins := instances(t, srv, 2, nil)
	ctx := context.Background()
	const members, senders, perSender = 1000, 4, 50
	recs := make([]*recorder, members)
	for i := range recs {
		recs[i] = &recorder{}
		m := ins[i%2].layer.NewMember(recs[i].handle, nil)
		defer m.Close()
		if err := m.Join(ctx, "room.1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, in := range ins {
		if n := srv.Subscriptions(t, in.name); n != 1 {
			t.Fatalf("%s: the server holds %d subscriptions, want 1", in.name, n)
		}
	}
	var wg sync.WaitGroup
	for s := range senders {
		wg.Go(func() {
			for k := 1; k <= perSender; k++ {
				if err := ins[s%2].layer.Send(ctx, "room.1", payload(fmt.Sprint(s), k, 0)); err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	eventually(t, "every member to get every message", func() bool {
		for _, r := range recs {
			if r.n.Load() < senders*perSender {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		last := seqs(t, fmt.Sprintf("member %d", i), r.messages())
		for s := range senders {
			if last[fmt.Sprint(s)] != perSender {
				t.Fatalf("member %d: last of sender %d is %d, want %d", i, s, last[fmt.Sprint(s)], perSender)
			}
		}
		if r.gaps.Load() != 0 || r.n.Load() != senders*perSender {
			t.Fatalf("member %d: %d messages, %d gaps", i, r.n.Load(), r.gaps.Load())
		}
	}
	for _, in := range ins {
		if st := in.layer.Stats(); st.Slow != 0 || st.Gaps != 0 {
			t.Errorf("%s: %+v", in.name, st)
		}
	}
}

// Ready says whether the connection is up; an engine over the caller's
// connection (New) leaves it open at Close, without its subscriptions.
func TestReadyAndNew(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.URL, nats.Name("mine"), nats.MaxReconnects(-1), nats.ReconnectWait(10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	e := natslayer.New(nc, &natslayer.Options{Logger: testLogger(t)})
	l, err := groups.New(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Ready(); err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	ctx := context.Background()
	for _, g := range []string{"a", "b.c"} {
		if err := m.Join(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.Subscriptions(t, "mine"); n != 2 {
		t.Fatalf("the server holds %d subscriptions, want 2", n)
	}
	// The subjects are the documented ones: a plain subscriber hears them.
	heard := make(chan string, 1)
	raw, err := nc.Subscribe(natslayer.Subject("dbscope", "b.c"), func(m *nats.Msg) { heard <- m.Subject })
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Send(ctx, "b.c", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if s := <-heard; s != "dbscope.g.b:c" {
		t.Fatalf("subject %q", s)
	}
	raw.Unsubscribe()
	eventually(t, "the message", func() bool { return r.n.Load() == 1 })

	srv.Kill(t)
	eventually(t, "Ready to fail", func() bool { return errors.Is(l.Ready(), natslayer.ErrNotConnected) })
	srv.Restart(t)
	eventually(t, "Ready again", func() bool { return l.Ready() == nil })
	eventually(t, "the gaps", func() bool { return r.gaps.Load() == 2 })

	m.Close()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if !nc.IsConnected() || nc.NumSubscriptions() != 0 {
		t.Fatalf("after Close: connected %v, %d subscriptions; want the connection open, none", nc.IsConnected(), nc.NumSubscriptions())
	}
	if n := srv.Subscriptions(t, "mine"); n != 0 {
		t.Fatalf("the server holds %d subscriptions after Close", n)
	}
	if err := l.Send(ctx, "a", nil); !errors.Is(err, groups.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}

// Layers with different prefixes on one server do not hear each other;
// a prefix that is not NATS tokens is refused at construction.
func TestPrefix(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	a := instances(t, srv, 1, &natslayer.Options{Prefix: "app-a"})[0]
	b := instances(t, srv, 1, &natslayer.Options{Prefix: "app_b.v1"})[0]
	ctx := context.Background()
	ra, rb := &recorder{}, &recorder{}
	ma, mb := a.layer.NewMember(ra.handle, nil), b.layer.NewMember(rb.handle, nil)
	defer ma.Close()
	defer mb.Close()
	for _, m := range []*groups.Member{ma, mb} {
		if err := m.Join(ctx, "g"); err != nil {
			t.Fatal(err)
		}
	}
	a.layer.Send(ctx, "g", []byte("a"))
	b.layer.Send(ctx, "g", []byte("b"))
	eventually(t, "both messages", func() bool { return ra.n.Load() == 1 && rb.n.Load() == 1 })
	if got := append(ra.messages(), rb.messages()...); got[0] != "a" || got[1] != "b" {
		t.Fatalf("got %q", got)
	}
	for _, bad := range []string{".", "a.", ".a", "a..b", "a b", "a.*", "a.>", "a\tb", "é"} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("prefix %q accepted", bad)
				}
			}()
			natslayer.New(a.engine.Conn(), &natslayer.Options{Prefix: bad})
		}()
	}
}
