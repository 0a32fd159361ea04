package groups_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A member closed, or leaving the group, while a Join of it is under way
// (a socket that goes away as its Connect's goroutine joins a room) is in
// no group of the layer once both have returned: the layer holds no
// member (checked by instances at the end) and, over PostgreSQL, its
// listener no channel for them.
func TestJoinRacesCloseAndLeave(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			l := instances(t, env, kind, 1)[0].layer
			ctx := context.Background()
			dbtest.NoHang(t, "joins racing closes", func() {
				for i := range 300 {
					m := l.NewMember(func(groups.Event) {}, nil)
					g := fmt.Sprint("room.", i)
					var wg sync.WaitGroup
					wg.Go(func() {
						if err := m.Join(ctx, g); err != nil && !errors.Is(err, groups.ErrClosed) {
							t.Errorf("Join: %v", err)
						}
					})
					wg.Go(func() {
						for range i % 5 {
							runtime.Gosched()
						}
						if i%2 == 0 {
							m.Close()
						} else {
							m.Leave(g)
						}
					})
					wg.Wait()
					if in := m.Groups(); i%2 == 1 && len(in) == 0 {
						// Left before the join was seen, or after it: in
						// neither case does the layer hold it.
						if st := l.Stats(); st.Groups != 0 {
							t.Fatalf("round %d: the member is in no group, the layer holds %d", i, st.Groups)
						}
					}
					m.Close()
				}
			})
			if st := l.Stats(); st.Groups != 0 || st.Members != 0 {
				t.Errorf("after every member closed: %+v", st)
			}
		})
	}
}

// A Join whose context ends before the engine has subscribed fails, and
// leaves this instance listening on nothing for it: a message to the
// group is not read here (PostgresStats.LargeReceived stays put), while
// one to a group a member here is in, sent after it, arrives.
func TestCanceledJoinListensOnNothing(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := pgInstances(t, env, 1, &groups.PostgresOptions{MaxPayload: 1 << 20})[0]
	ctx := context.Background()
	for i := range 20 {
		canceled, cancel := context.WithCancel(ctx)
		cancel()
		m := in.layer.NewMember(func(groups.Event) {}, nil)
		m.Join(canceled, fmt.Sprint("gone.", i)) // fails, or joins
		m.Close()
	}
	var rec recorder
	m := in.layer.NewMember(rec.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "here"); err != nil {
		t.Fatal(err)
	}
	before := in.pg.Stats().LargeReceived
	for i := range 20 {
		if err := in.layer.Send(ctx, fmt.Sprint("gone.", i), []byte(strings.Repeat("x", 10000))); err != nil {
			t.Fatal(err)
		}
	}
	if err := in.layer.Send(ctx, "here", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message to the group with a member here", func() bool { return rec.n.Load() == 1 })
	if n := in.pg.Stats().LargeReceived - before; n != 0 {
		t.Errorf("the listener read %d messages of groups nobody here is in: still LISTENing", n)
	}
}

// Joins under way as the layer closes return, with ErrClosed where they
// could not finish: none waits for a listener that is gone.
func TestJoinAtLayerClose(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	for range 5 {
		in := pgInstances(t, env, 1, nil)[0]
		var wg sync.WaitGroup
		var ms []*groups.Member
		for i := range 20 {
			m := in.layer.NewMember(func(groups.Event) {}, nil)
			ms = append(ms, m)
			wg.Go(func() {
				err := m.Join(context.Background(), fmt.Sprint("g.", i))
				if err != nil && !errors.Is(err, groups.ErrClosed) {
					t.Errorf("Join: %v", err)
				}
			})
		}
		runtime.Gosched()
		in.layer.Close()
		dbtest.NoHang(t, "the joins", wg.Wait)
		for _, m := range ms {
			m.Close()
		}
	}
}

// gatedEngine is the memory engine with a Subscribe that waits for its
// gate (a LISTEN's round trip) and says it has begun.
type gatedEngine struct {
	*groups.Memory
	entered chan struct{}
	gate    chan struct{}
}

func (e gatedEngine) Subscribe(ctx context.Context, g string) error {
	e.entered <- struct{}{}
	select {
	case <-e.gate:
	case <-ctx.Done():
		return ctx.Err()
	}
	return e.Memory.Subscribe(ctx, g)
}

// Two Joins of one member to one group at once (a socket joining from
// Connect's goroutine and from a message): the second returns once the
// member is in the group, the first's failure notwithstanding: the
// member is in it, and a message sent then reaches it.
func TestConcurrentJoins(t *testing.T) {
	t.Parallel()
	e := gatedEngine{groups.NewMemory(), make(chan struct{}, 2), make(chan struct{})}
	l, err := groups.New(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var rec recorder
	m := l.NewMember(rec.handle, nil)
	defer m.Close()
	ctx1, cancel1 := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() { first <- m.Join(ctx1, "g") }()
	<-e.entered
	second := make(chan error, 1)
	go func() { second <- m.Join(context.Background(), "g") }()
	cancel1()
	if err := <-first; !errors.Is(err, context.Canceled) {
		t.Fatalf("first Join: %v, want context.Canceled", err)
	}
	close(e.gate)
	var err2 error
	dbtest.NoHang(t, "the second Join", func() { err2 = <-second })
	if err2 != nil {
		t.Fatal(err2)
	}
	if g := m.Groups(); len(g) != 1 {
		t.Fatalf("the second Join returned nil, the member is in %v", g)
	}
	if err := l.Send(context.Background(), "g", []byte("x")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message", func() bool { return rec.n.Load() == 1 })
}

// The event a member's callback has in hand stops being Current once the
// member leaves its group, even to join it again, or is closed: a callback
// that waits before it acts on its event (wsconsumer's, for the socket's
// turn) asks Current once done waiting, so that what Leave promises holds
// for the event it holds too. An event of another group, or one queued
// after the Join again, is Current.
func TestCurrent(t *testing.T) {
	t.Parallel()
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer layer.Close()
	type handed struct {
		e       groups.Event
		current chan bool
	}
	in := make(chan handed)
	var m *groups.Member
	m = layer.NewMember(func(e groups.Event) {
		h := handed{e, make(chan bool)}
		in <- h
		<-h.current              // the test's turn
		h.current <- m.Current() // what the callback would ask
	}, nil)
	ctx := context.Background()
	for _, g := range []string{"a", "b"} {
		if err := m.Join(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	// next takes the next event in hand, has act run while the callback
	// waits, and returns what Current said after it.
	next := func(want string, act func()) bool {
		t.Helper()
		h := <-in
		if string(h.e.Data) != want {
			t.Fatalf("got %q, want %q", h.e.Data, want)
		}
		act()
		h.current <- true
		return <-h.current
	}
	send := func(g, data string) {
		t.Helper()
		if err := layer.Send(ctx, g, []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	send("a", "1")
	if !next("1", func() {}) {
		t.Error("an event of a group the member is in is not Current")
	}
	send("a", "2")
	if next("2", func() { m.Leave("b") }) != true {
		t.Error("leaving another group made the event in hand not Current")
	}
	send("a", "3")
	if next("3", func() { m.Leave("a") }) {
		t.Error("the event in hand is Current after Leave of its group returned")
	}
	if err := m.Join(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	send("a", "4")
	if next("4", func() {
		m.Leave("a")
		if err := m.Join(ctx, "a"); err != nil {
			t.Error(err)
		}
		send("a", "5") // queued after the Join again
	}) {
		t.Error("the event in hand is Current after its group was left and joined again")
	}
	if !next("5", func() {}) {
		t.Error("an event sent after the Join again is not Current")
	}
	send("a", "6")
	closed := make(chan struct{})
	if next("6", func() {
		go func() { m.Close(); close(closed) }()
		dbtest.Eventually(t, "the member out of its groups", func() bool { return len(m.Groups()) == 0 })
	}) {
		t.Error("the event in hand is Current after Close")
	}
	<-closed
	if m.Current() {
		t.Error("Current outside the callback")
	}
}
