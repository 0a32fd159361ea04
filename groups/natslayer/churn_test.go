package natslayer_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
)

// 5,000 members over two instances, in 25 groups, while four senders send
// and members move between groups, and others join groups of their own
// (each a subscription made and dropped) and hear a message sent from
// the other instance right after Join returned: nothing comes twice or
// out of order, nothing sent after a member left a group reaches it,
// members that stayed get everything, and at the end no member, group,
// subscription (the engines', the server's) or goroutine is left.
//
// Not parallel: it counts goroutines.
func TestChurn(t *testing.T) {
	srv := natstest.Start(t)
	ins := instances(t, srv, 2, nil)
	baseline := runtime.NumGoroutine()
	ctx := context.Background()
	const (
		members   = 5000
		big       = 25
		senders   = 4
		perSender = 250
		churners  = 50
		moves     = 3 // per member at most: never back to a group it left
		step      = 7 // big/step > moves: the groups a member visits differ
	)
	type member struct {
		m    *groups.Member
		rec  *recorder
		in   int
		cur  int              // its group now, big.<cur>
		left map[string]int64 // groups left: the seqs started by then
	}
	ms := make([]*member, members)
	for i := range ms {
		r := &recorder{}
		mb := &member{rec: r, in: i % 2, cur: i % big, left: map[string]int64{}}
		mb.m = ins[mb.in].layer.NewMember(r.handle, nil)
		if err := mb.m.Join(ctx, fmt.Sprintf("big.%d", mb.cur)); err != nil {
			t.Fatal(err)
		}
		ms[i] = mb
	}
	for _, in := range ins {
		if n := srv.Subscriptions(t, in.name); n != big {
			t.Fatalf("%s: the server holds %d subscriptions, want %d", in.name, n, big)
		}
	}

	var (
		started atomic.Int64 // seqs handed out: a Send starts after
		sentMu  sync.Mutex
		sentTo  = map[string]int{} // messages taken, by group
		running sync.WaitGroup
		done    = make(chan struct{}) // the senders are done
	)
	var sending sync.WaitGroup
	for s := range senders {
		sending.Go(func() {
			tick := time.NewTicker(2 * time.Millisecond)
			defer tick.Stop()
			for k := range perSender {
				<-tick.C
				g := fmt.Sprintf("big.%d", (k*senders+s)%big)
				seq := int(started.Add(1))
				if err := ins[s%2].layer.Send(ctx, g, payload(fmt.Sprint(s), seq, 0)); err != nil {
					t.Errorf("send: %v", err)
					return
				}
				sentMu.Lock()
				sentTo[g]++
				sentMu.Unlock()
			}
		})
	}
	go func() {
		sending.Wait()
		close(done)
	}()
	// Movers: each owns the members i%churners == c, and moves them.
	for c := range churners {
		running.Go(func() {
			for round := range moves {
				for i := c; i < members; i += churners {
					select {
					case <-done:
						return
					default:
					}
					if (i/churners)%(round+2) != 0 {
						continue // not everyone moves, nor every time
					}
					mb := ms[i]
					from := fmt.Sprintf("big.%d", mb.cur)
					mb.m.Leave(from)
					mb.left[from] = started.Load()
					mb.cur = (mb.cur + step) % big
					if err := mb.m.Join(ctx, fmt.Sprintf("big.%d", mb.cur)); err != nil {
						t.Errorf("join: %v", err)
						return
					}
				}
			}
		})
	}
	// Joiners of groups of their own, which the other instance sends to
	// as soon as Join returned.
	var joins atomic.Int64
	for w := range 10 {
		running.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-done:
					return
				default:
				}
				here, there := ins[(w+k)%2], ins[(w+k+1)%2]
				g := fmt.Sprintf("own.%d.%d", w, k)
				r := &recorder{}
				m := here.layer.NewMember(r.handle, nil)
				if err := m.Join(ctx, g); err != nil {
					t.Errorf("join: %v", err)
					return
				}
				if err := there.layer.Send(ctx, g, []byte("hello")); err != nil {
					t.Errorf("send: %v", err)
					return
				}
				if !waitFor(func() bool { return r.n.Load() == 1 }) {
					t.Errorf("%s: the message sent right after Join did not arrive", g)
				}
				m.Close()
				joins.Add(1)
			}
		})
	}
	running.Wait()
	<-done
	if joins.Load() == 0 {
		t.Fatal("no join of a group of its own")
	}

	// Everything sent has arrived once the members that stayed in a
	// group have all of its messages.
	stayed := func(mb *member) bool { return len(mb.left) == 0 }
	delivered := func() (n int64) {
		for _, mb := range ms {
			n += mb.rec.n.Load()
		}
		return n
	}
	eventuallyWhileProgress(t, "the members that stayed to get all", func() bool {
		for _, mb := range ms {
			if stayed(mb) && int(mb.rec.n.Load()) < sentTo[fmt.Sprintf("big.%d", mb.cur)] {
				return false
			}
		}
		return true
	}, delivered)
	moved := 0
	for i, mb := range ms {
		byGroup := map[string][]string{}
		for _, e := range mb.rec.got() {
			if e.Gap {
				t.Fatalf("member %d got a gap", i)
			}
			byGroup[e.Group] = append(byGroup[e.Group], string(e.Data))
		}
		for g, msgs := range byGroup {
			seqs(t, fmt.Sprintf("member %d in %s", i, g), msgs)
			n, wasIn := mb.left[g]
			if !wasIn && g != fmt.Sprintf("big.%d", mb.cur) {
				t.Fatalf("member %d got messages of %s, never its group", i, g)
			}
			for _, m := range msgs {
				if _, seq, _ := parse(m); wasIn && int64(seq) > n {
					t.Fatalf("member %d got %q of %s, sent after it left (%d started then)", i, m, g, n)
				}
			}
		}
		if stayed(mb) {
			if got, want := int(mb.rec.n.Load()), sentTo[fmt.Sprintf("big.%d", mb.cur)]; got != want {
				t.Fatalf("member %d got %d messages, want %d", i, got, want)
			}
		} else {
			moved++
		}
	}
	t.Logf("%d members moved, %d joined groups of their own; %d messages sent", moved, joins.Load(), started.Load())

	for _, mb := range ms {
		mb.m.Close()
	}
	for _, in := range ins {
		st := in.layer.Stats()
		if st.Members != 0 || st.Groups != 0 || st.Slow != 0 {
			t.Fatalf("%s: layer %+v after every member closed", in.name, st)
		}
		if st := in.engine.Stats(); st.Subscriptions != 0 || st.SlowConsumers != 0 {
			t.Fatalf("%s: engine %+v after every member closed", in.name, st)
		}
		if n := in.engine.Conn().NumSubscriptions(); n != 0 {
			t.Fatalf("%s: the connection holds %d subscriptions", in.name, n)
		}
		eventually(t, in.name+"'s subscriptions gone from the server", func() bool {
			return srv.Subscriptions(t, in.name) == 0
		})
	}
	eventually(t, "the goroutines back to where they were", func() bool { return runtime.NumGoroutine() <= baseline })
}
