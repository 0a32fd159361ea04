package natslayer_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/nats-io/nats.go"
)

// nats-server is killed and restarted while both instances send to two
// groups with members on both: every member gets a gap for its group,
// each instance's subscriptions are back at the server, delivery resumes
// by itself, nothing comes twice or out of order, and what was lost is
// counted (reported in the test's log).
func TestServerRestart(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ins := instances(t, srv, 2, nil)
	ctx := context.Background()
	grps := []string{"r.1", "r.2"}
	type member struct {
		group string
		rec   *recorder
	}
	var members []member
	for i := range 80 {
		g := grps[i%2]
		r := &recorder{}
		m := ins[(i/2)%2].layer.NewMember(r.handle, nil)
		defer m.Close()
		if err := m.Join(ctx, g); err != nil {
			t.Fatal(err)
		}
		members = append(members, member{g, r})
	}

	// One sender per instance, a message every millisecond to each group.
	var (
		stop              = make(chan struct{})
		senders           sync.WaitGroup
		accepted, refused [2]atomic.Int64
		last              [2]atomic.Int64 // the last seq sent, by sender
	)
	for s, in := range ins {
		senders.Go(func() {
			tick := time.NewTicker(time.Millisecond)
			defer tick.Stop()
			for seq := 1; ; seq++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				for _, g := range grps {
					err := in.layer.Send(ctx, g, payload(fmt.Sprint(s), seq, 0))
					switch {
					case err == nil:
						accepted[s].Add(1)
					case errors.Is(err, nats.ErrReconnectBufExceeded):
						refused[s].Add(1)
					default:
						t.Errorf("send: %v", err)
						return
					}
				}
				last[s].Store(int64(seq))
			}
		})
	}
	stopSenders := sync.OnceFunc(func() {
		close(stop)
		senders.Wait()
	})
	defer stopSenders()
	// got reports whether every member got, from each sender, a message
	// sent after after[sender].
	got := func(after [2]int64) bool {
		for _, m := range members {
			msgs := m.rec.messages()
			for s := range 2 {
				ok := false
				for i := len(msgs) - 1; i >= 0 && !ok; i-- {
					if sender, seq, _ := parse(msgs[i]); sender == fmt.Sprint(s) && int64(seq) > after[s] {
						ok = true
					}
				}
				if !ok {
					return false
				}
			}
		}
		return true
	}
	eventually(t, "the stream to flow", func() bool { return got([2]int64{10, 10}) })

	srv.Kill(t)
	for _, in := range ins {
		eventually(t, in.name+" to see the connection down", func() bool {
			return errors.Is(in.layer.Ready(), natslayer.ErrNotConnected)
		})
	}
	// The senders go on meanwhile, into the reconnect buffers.
	downAt := [2]int64{last[0].Load(), last[1].Load()}
	eventually(t, "sends while down", func() bool { return last[0].Load() > downAt[0]+20 && last[1].Load() > downAt[1]+20 })
	srv.Restart(t)

	for _, in := range ins {
		eventually(t, in.name+" ready again", func() bool { return in.layer.Ready() == nil })
	}
	eventually(t, "a gap for every member", func() bool {
		for _, m := range members {
			if m.rec.gaps.Load() == 0 {
				return false
			}
		}
		return true
	})
	for _, in := range ins {
		if n := srv.Subscriptions(t, in.name); n != len(grps) {
			t.Fatalf("%s: the server holds %d subscriptions after the restart, want %d", in.name, n, len(grps))
		}
	}
	resumed := [2]int64{last[0].Load(), last[1].Load()}
	eventually(t, "delivery to resume", func() bool { return got(resumed) })

	stopSenders()
	var lost int64
	for i, m := range members {
		for _, e := range m.rec.got() {
			if e.Gap && e.Group != m.group {
				t.Fatalf("member %d of %s got a gap for %s", i, m.group, e.Group)
			}
		}
		msgs := m.rec.messages()
		seqs(t, fmt.Sprintf("member %d", i), msgs)
		// A member's share of what was accepted: each sender's messages
		// to its group, from the member's first.
		first := map[string]int{}
		for _, msg := range msgs {
			if s, seq, _ := parse(msg); first[s] == 0 {
				first[s] = seq
			}
		}
		for s := range 2 {
			want := last[s].Load() - int64(first[fmt.Sprint(s)]) + 1
			lost += want - int64(countFrom(msgs, fmt.Sprint(s)))
		}
	}
	for s, in := range ins {
		st, est := in.layer.Stats(), in.engine.Stats()
		t.Logf("%s: layer %+v; engine %+v; sends accepted %d, refused %d", in.name, st, est, accepted[s].Load(), refused[s].Load())
		if st.Reconnects != 1 || est.Disconnects != 1 || est.Reconnects != 1 {
			t.Errorf("%s: want one disconnection and one reconnection counted", in.name)
		}
		if st.Gaps < int64(len(members)/2) {
			t.Errorf("%s: %d gaps counted, want one per member at least", in.name, st.Gaps)
		}
		if est.Buffered == 0 {
			t.Errorf("%s: no publish counted as buffered while down", in.name)
		}
	}
	t.Logf("messages missed by members, refused sends included: %d of %d", lost, int64(len(members))*(last[0].Load()+last[1].Load()))
}

// countFrom counts the messages of sender in msgs.
func countFrom(msgs []string, sender string) int {
	n := 0
	for _, m := range msgs {
		if s, _, _ := parse(m); s == sender {
			n++
		}
	}
	return n
}

// A Join while the server is down returns at once; on reconnection the
// group is subscribed, its member gets a gap, and then messages.
func TestJoinWhileDown(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ins := instances(t, srv, 2, nil)
	ctx := context.Background()
	srv.Kill(t)
	eventually(t, "the connection down", func() bool { return ins[0].layer.Ready() != nil })
	r := &recorder{}
	m := ins[0].layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "late"); err != nil {
		t.Fatal(err)
	}
	srv.Restart(t)
	eventually(t, "the gap", func() bool { return r.gaps.Load() == 1 })
	if n := srv.Subscriptions(t, ins[0].name); n != 1 {
		t.Fatalf("the server holds %d subscriptions, want 1", n)
	}
	eventually(t, "instance 1 ready", func() bool { return ins[1].layer.Ready() == nil })
	if err := ins[1].layer.Send(ctx, "late", []byte("hi")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the message", func() bool { return r.n.Load() == 1 })
}

// Two instances send inside dbctx.Atomic (published at the commit) while
// nats-server is killed and restarted, with reconnect buffers too small
// for the outage: a message of committed work whose publish failed (the
// buffer full) was lost without a gap for the members of the other
// instance, whose connection was back first (their gap came before the
// sender's buffered messages, the loss after them). Every committed
// message a member misses is now followed by a gap: the gap that could not
// go out with the connection down goes out once it is back. Per sender,
// nothing twice or out of order.
func TestRestartAtomicGapAfterLoss(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	ins := instances(t, srv, 2, &natslayer.Options{ReconnectBuffer: 4 << 10})
	pool, _ := dbtest.NewPool(t, nil)
	ctx := context.Background()
	var recs []*recorder
	for i := range 6 {
		r := &recorder{}
		m := ins[i%2].layer.NewMember(r.handle, nil)
		defer m.Close()
		if err := m.Join(ctx, "s"); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	var committed [2][]int
	var mu sync.Mutex
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for s, in := range ins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 1; ; seq++ {
				select {
				case <-stop:
					return
				default:
				}
				err := pool.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
					return dbctx.Atomic(ctx, func(ctx context.Context) error {
						if _, err := sc.ExecContext(ctx, "SELECT 1"); err != nil {
							return err
						}
						return in.layer.Send(ctx, "s", payload(fmt.Sprint(s), seq, 100))
					})
				})
				if err == nil {
					mu.Lock()
					committed[s] = append(committed[s], seq)
					mu.Unlock()
				}
				time.Sleep(500 * time.Microsecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	srv.Kill(t)
	time.Sleep(400 * time.Millisecond)
	srv.Restart(t)
	for _, in := range ins {
		eventually(t, "ready", func() bool { return in.layer.Ready() == nil })
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	// A marker per sender: once each member has both, it has the rest.
	for s, in := range ins {
		in.layer.Send(ctx, "s", payload(fmt.Sprint(s), 1<<30, 10))
	}
	eventually(t, "markers", func() bool {
		for _, r := range recs {
			n := 0
			for _, m := range r.messages() {
				if _, seq, _ := parse(m); seq == 1<<30 {
					n++
				}
			}
			if n < 2 {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		evs := r.got()
		for s := range 2 {
			sender := fmt.Sprint(s)
			// Where each of the sender's messages came, and the gaps.
			pos := map[int]int{}
			var gaps []int
			for k, e := range evs {
				if e.Gap {
					gaps = append(gaps, k)
					continue
				}
				if snd, seq, _ := parse(string(e.Data)); snd == sender {
					if _, dup := pos[seq]; dup {
						t.Errorf("member %d: %s:%d twice", i, sender, seq)
					}
					pos[seq] = k
				}
			}
			prevPos := -1
			missing, uncovered := 0, 0
			first := true
			for _, seq := range committed[s] {
				p, ok := pos[seq]
				if ok {
					if p < prevPos {
						t.Errorf("member %d: %s:%d out of order", i, sender, seq)
					}
					prevPos = p
					first = false
					continue
				}
				if first {
					continue
				}
				missing++
				covered := false
				for _, g := range gaps {
					if g > prevPos {
						covered = true
					}
				}
				if !covered {
					uncovered++
				}
			}
			t.Logf("member %d, sender %d: %d committed, %d missed", i, s, len(committed[s]), missing)
			if uncovered > 0 {
				t.Errorf("member %d: %d committed messages of sender %d lost without a gap after them", i, uncovered, s)
			}
		}
	}
	for _, in := range ins {
		t.Logf("%s: %+v", in.name, in.engine.Stats())
	}
}
