package natslayer_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/nats-io/nats.go"
)

// A member that does not keep up, on one instance, is told and dropped;
// it delays nobody: the members of the other instance, and the fast one
// beside it, get everything while it is still stuck.
func TestSlowMember(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ins := instances(t, srv, 2, nil)
	ctx := context.Background()
	block := make(chan struct{})
	var told atomic.Int64
	slow := ins[0].layer.NewMember(func(groups.Event) { <-block }, &groups.MemberOptions{
		MaxQueue: 10,
		OnSlow:   func() { told.Add(1) },
	})
	defer slow.Close()
	if err := slow.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	var fast []*recorder
	for i := range 101 {
		r := &recorder{}
		m := ins[min(i, 1)].layer.NewMember(r.handle, nil) // one beside the slow member, 100 elsewhere
		defer m.Close()
		if err := m.Join(ctx, "g"); err != nil {
			t.Fatal(err)
		}
		fast = append(fast, r)
	}
	const msgs = 500
	for k := 1; k <= msgs; k++ {
		if err := ins[k%2].layer.Send(ctx, "g", payload(fmt.Sprint(k%2), k, 0)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the fast members to get all, the slow one stuck", func() bool {
		for _, r := range fast {
			if r.n.Load() < msgs {
				return false
			}
		}
		return true
	})
	close(block)
	eventually(t, "the slow member to be told", func() bool { return told.Load() == 1 })
	if st := ins[0].layer.Stats(); st.Slow != 1 {
		t.Fatalf("instance 0: %+v, want one slow member", st)
	}
	if st := ins[1].layer.Stats(); st.Slow != 0 || st.Gaps != 0 {
		t.Fatalf("instance 1: %+v", st)
	}
}

// inbox is an Inbox of the test's, for the engine alone: it records what
// it is handed, checks that it is never handed two things at once, and
// holds deliveries of "slow:…" payloads while hold is open.
type inbox struct {
	t       *testing.T
	busy    atomic.Int32
	hold    chan struct{}
	holding chan struct{} // closed at the first held delivery
	once    sync.Once

	mu     sync.Mutex
	got    []string // payloads, and "gap:<group>" for a gap
	reconn int
}

func (in *inbox) enter() {
	if in.busy.Add(1) != 1 {
		in.t.Error("the engine handed the inbox two things at once")
	}
}

func (in *inbox) Deliver(p []byte) {
	in.enter()
	defer in.busy.Add(-1)
	if strings.HasPrefix(string(p), "slow:") && in.hold != nil {
		in.once.Do(func() { close(in.holding) })
		<-in.hold
	}
	in.mu.Lock()
	in.got = append(in.got, string(p))
	in.mu.Unlock()
}

func (in *inbox) Gap(groups []string) {
	in.enter()
	defer in.busy.Add(-1)
	in.mu.Lock()
	defer in.mu.Unlock()
	if groups == nil {
		in.got = append(in.got, "gap:*")
	}
	for _, g := range groups {
		in.got = append(in.got, "gap:"+g)
	}
}

func (in *inbox) Reconnected() {
	in.mu.Lock()
	in.reconn++
	in.mu.Unlock()
}

func (in *inbox) events() []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.got...)
}

// count returns how many events start with prefix.
func (in *inbox) count(prefix string) int {
	n := 0
	for _, e := range in.events() {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

// A group whose deliveries cannot keep up overflows its own pending
// limit: what overflows is dropped and counted, and the group gets a gap
// before its next delivery; another group, waiting meanwhile on its own
// subscription, loses nothing and gets no gap.
func TestPendingLimits(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	log := testLogger(t)
	const limit = 10
	e, err := natslayer.Connect(srv.URL, &natslayer.Options{PendingMsgs: limit, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	in := &inbox{t: t, hold: make(chan struct{}), holding: make(chan struct{})}
	if err := e.Start(in); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	for _, g := range []string{"slow", "other"} {
		if err := e.Subscribe(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	pub, err := nats.Connect(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	publish := func(group, data string) {
		t.Helper()
		if err := pub.Publish(natslayer.Subject("dbscope", group), []byte(data)); err != nil {
			t.Fatal(err)
		}
	}
	publish("slow", "slow:1")
	await(t, "the first delivery, held", in.holding)
	const slowMsgs, otherMsgs = 100, 5
	for k := 2; k <= slowMsgs; k++ {
		publish("slow", fmt.Sprintf("slow:%d", k))
	}
	for k := 1; k <= otherMsgs; k++ {
		publish("other", fmt.Sprintf("other:%d", k))
	}
	// The server sends one publisher's messages to a connection in order:
	// once a probe sent last reaches it, so have the ones before.
	probed := make(chan struct{})
	probe, err := e.Conn().Subscribe(natslayer.Subject("dbscope", "probe"), func(*nats.Msg) { close(probed) })
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Unsubscribe()
	if err := e.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	publish("probe", "")
	await(t, "the probe", probed)
	close(in.hold)
	eventually(t, "the other group's messages", func() bool { return in.count("other:") == otherMsgs })
	want := limit + 1 // the one held, and limit waiting besides it
	eventually(t, "the slow group's pending messages", func() bool { return in.count("slow:") == want })
	got := in.events()
	if got[0] != "slow:1" || in.count("gap:") != 1 {
		t.Fatalf("got %q, want slow:1 first and one gap", got)
	}
	for i, ev := range got {
		if ev == "gap:slow" && (i+1 == len(got) || !strings.HasPrefix(got[i+1], "slow:")) {
			t.Fatalf("got %q: the gap is not right before a slow delivery", got)
		}
	}
	st := e.Stats()
	if st.SlowConsumers != 1 || st.Dropped != int64(slowMsgs-want) {
		t.Fatalf("stats %+v, want 1 slow consumer, %d dropped", st, slowMsgs-want)
	}
}

// Messages that overflow a group's PendingBytes while the one in hand
// (held by the inbox) is all that waits before them: each is delivered,
// or dropped and then counted, with a gap for the group, never lost in
// silence. nats.go counts the message in hand as pending until its
// delivery returns; a drop with nothing pending after it would get no
// later delivery to bring its gap.
func TestOverflowBehindHeldMessage(t *testing.T) {
	t.Parallel()
	big := strings.Repeat("x", 600<<10) // two fit MaxPayload (1 MiB) each, not PendingBytes together
	for _, n := range []int{2, 4} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			srv := natstest.Start(t)
			e, err := natslayer.Connect(srv.URL, &natslayer.Options{PendingBytes: 1 << 20, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			in := &inbox{t: t, hold: make(chan struct{}), holding: make(chan struct{})}
			if err := e.Start(in); err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			if err := e.Subscribe(context.Background(), "slow"); err != nil {
				t.Fatal(err)
			}
			pub, err := nats.Connect(srv.URL)
			if err != nil {
				t.Fatal(err)
			}
			defer pub.Close()
			publish := func(k int) {
				t.Helper()
				if err := pub.Publish(natslayer.Subject("dbscope", "slow"), fmt.Appendf(nil, "slow:%d:%s", k, big)); err != nil {
					t.Fatal(err)
				}
			}
			publish(1)
			await(t, "the first delivery, held", in.holding)
			for k := 2; k <= n; k++ {
				publish(k)
			}
			// Once a probe published last reaches the engine's
			// connection, so have the messages before it.
			probed := make(chan struct{})
			probe, err := e.Conn().Subscribe(natslayer.Subject("dbscope", "probe"), func(*nats.Msg) { close(probed) })
			if err != nil {
				t.Fatal(err)
			}
			defer probe.Unsubscribe()
			if err := e.Conn().Flush(); err != nil {
				t.Fatal(err)
			}
			if err := pub.Publish(natslayer.Subject("dbscope", "probe"), nil); err != nil {
				t.Fatal(err)
			}
			await(t, "the probe", probed)
			close(in.hold)
			eventually(t, "every message delivered or counted dropped", func() bool {
				return int64(in.count("slow:"))+e.Stats().Dropped == int64(n)
			})
			st := e.Stats()
			got := in.count("slow:")
			t.Logf("%d delivered, %d gaps, stats %+v", got, in.count("gap:"), st)
			if st.Dropped == 0 {
				if in.count("gap:") != 0 {
					t.Fatalf("a gap without a drop: %+v", st)
				}
				if n > 2 {
					t.Fatalf("%d messages of 600 KiB fit PendingBytes of 1 MiB beside the one in hand", n)
				}
				return
			}
			if in.count("gap:slow") != 1 || st.SlowConsumers != 1 {
				t.Fatalf("%d dropped: %d gaps, stats %+v; want one gap, one slow consumer", st.Dropped, in.count("gap:"), st)
			}
			ev := in.events()
			if ev[0] != "slow:1:"+big || ev[1] != "gap:slow" {
				t.Fatalf("want the held message, then the gap, then the rest; got %d events, the second %.20q", len(ev), ev[1])
			}
		})
	}
}

// Many groups at once: the engine hands the inbox one thing at a time
// (inbox.enter checks) and every group's messages in order.
func TestOneAtATime(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	e, err := natslayer.Connect(srv.URL, &natslayer.Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	in := &inbox{t: t}
	if err := e.Start(in); err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	ctx := context.Background()
	const grps, perGroup = 50, 200
	for g := range grps {
		if err := e.Subscribe(ctx, fmt.Sprintf("g.%d", g)); err != nil {
			t.Fatal(err)
		}
	}
	for k := 1; k <= perGroup; k++ {
		for g := range grps {
			if err := e.Publish(ctx, fmt.Sprintf("g.%d", g), fmt.Appendf(nil, "%d:%d", g, k)); err != nil {
				t.Fatal(err)
			}
		}
	}
	eventually(t, "every message", func() bool { return len(in.events()) == grps*perGroup })
	seqs(t, "the inbox", in.events())
	if st := e.Stats(); st.Subscriptions != grps || st.SlowConsumers != 0 {
		t.Fatalf("stats %+v", st)
	}
	for g := range grps {
		e.Unsubscribe(fmt.Sprintf("g.%d", g))
	}
	if n := e.Conn().NumSubscriptions(); n != 0 {
		t.Fatalf("%d subscriptions left", n)
	}
}

// Instances whose PendingBytes differ (tuned per host): a message another
// instance may send, past this one's PendingBytes, while the group's
// subscription holds nothing else, is still delivered, or told as a gap:
// the room nats.go's limits keep for the message in hand is the server's
// max_payload, not this instance's limits.
func TestLargerMessageThanPendingBytes(t *testing.T) {
	srv := natstest.Start(t)
	ctx := context.Background()
	recv := instances(t, srv, 1, &natslayer.Options{PendingBytes: 64 << 10})[0]
	send := instances(t, srv, 1, nil)[0]
	r := &recorder{}
	m := recv.layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "big"); err != nil {
		t.Fatal(err)
	}
	if err := send.layer.Send(ctx, "big", []byte("small")); err != nil {
		t.Fatal(err)
	}
	if err := send.layer.Send(ctx, "big", []byte(strings.Repeat("x", 200<<10))); err != nil {
		t.Fatalf("the sender refused: %v", err)
	}
	eventually(t, "the 200 KiB message, or a gap for it", func() bool { return r.n.Load() >= 2 || r.gaps.Load() > 0 })
}
