package groups_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// instance is one server instance: a pool and a layer of its own.
type instance struct {
	pool  *dbctx.Pool
	layer *groups.Layer
	pg    *groups.Postgres // the engine, over PostgreSQL
}

// instances starts n layers of the engine kind ("memory": they share
// nothing, so only n = 1 makes sense; "postgres": over env's database,
// each with its own pool and listener), closed at the test's end with
// their stats checked back at zero members.
func instances(t testing.TB, env *pgtest.Env, kind string, n int) []*instance {
	t.Helper()
	if kind == "postgres" {
		return pgInstances(t, env, n, nil)
	}
	return []*instance{newInstance(t, env, func(*dbctx.Pool) groups.Engine { return groups.NewMemory() })}
}

// pgInstances starts n layers over PostgreSQL as instances does, with
// opts, whose ListenDSN, Namespace and SampleEvery are filled in where
// unset.
func pgInstances(t testing.TB, env *pgtest.Env, n int, opts *groups.PostgresOptions) []*instance {
	t.Helper()
	var o groups.PostgresOptions
	if opts != nil {
		o = *opts
	}
	if o.ListenDSN == "" {
		o.ListenDSN = env.DirectDSN(t)
	}
	if o.Namespace == "" {
		o.Namespace = env.Schema()
	}
	if o.SampleEvery == 0 {
		o.SampleEvery = 100 * time.Millisecond
	}
	var out []*instance
	for range n {
		var e *groups.Postgres
		in := newInstance(t, env, func(p *dbctx.Pool) groups.Engine {
			e = groups.NewPostgres(p, &o)
			return e
		})
		in.pg = e
		out = append(out, in)
	}
	return out
}

func newInstance(t testing.TB, env *pgtest.Env, engine func(*dbctx.Pool) groups.Engine) *instance {
	t.Helper()
	// Behind a pooler, as its users declare it: the INSERT of a large
	// message must not be refused.
	p := dbctx.New(env.Open(t), &dbctx.Options{MaxWorkers: 4, TransactionPooling: pgtest.Pooled()})
	l, err := groups.New(engine(p), nil)
	if err != nil {
		p.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if st := l.Stats(); st.Members != 0 || st.Groups != 0 {
			t.Errorf("layer not empty at the end: %+v", st)
		}
		l.Close()
		dbtest.Clean(t, p, env)
		p.Close()
	})
	return &instance{pool: p, layer: l}
}

// recorder is a member's callback that keeps what it got.
type recorder struct {
	mu     sync.Mutex
	events []groups.Event
	n      atomic.Int64
}

func (r *recorder) handle(e groups.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	r.n.Add(1)
}

func (r *recorder) got() []groups.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]groups.Event(nil), r.events...)
}

var kinds = []string{"memory", "postgres"}

// waitFor polls cond for up to 10 seconds: for goroutines other than the
// test's, which must not call t.Fatal.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// Every member, on either instance, gets every message once, and the
// messages of each sender in the order sent.
func TestDelivery(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			n := 2
			if kind == "memory" {
				n = 1
			}
			ins := instances(t, env, kind, n)
			ctx := context.Background()
			const members, senders, perSender = 1000, 4, 25
			recs := make([]*recorder, members)
			for i := range recs {
				recs[i] = &recorder{}
				m := ins[i%n].layer.NewMember(recs[i].handle, nil)
				defer m.Close()
				if err := m.Join(ctx, "room.1"); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			for s := range senders {
				wg.Go(func() {
					for k := range perSender {
						if err := ins[s%n].layer.Send(ctx, "room.1", fmt.Appendf(nil, "%d:%d", s, k)); err != nil {
							t.Errorf("send: %v", err)
							return
						}
					}
				})
			}
			wg.Wait()
			dbtest.Eventually(t, "every member to get every message", func() bool {
				for _, r := range recs {
					if r.n.Load() < senders*perSender {
						return false
					}
				}
				return true
			})
			for i, r := range recs {
				next := make([]int, senders)
				for _, e := range r.got() {
					var s, k int
					if _, err := fmt.Sscanf(string(e.Data), "%d:%d", &s, &k); err != nil || e.Group != "room.1" || e.Gap {
						t.Fatalf("member %d got %+v", i, e)
					}
					if k != next[s] {
						t.Fatalf("member %d got %d:%d, want %d:%d: out of order, lost or twice", i, s, k, s, next[s])
					}
					next[s]++
				}
			}
			for _, in := range ins {
				if st := in.layer.Stats(); st.Slow != 0 {
					t.Errorf("slow members: %+v", st)
				}
			}
		})
	}
}

// Members join and leave while messages are sent: a member gets nothing
// sent after it left, nothing twice, and in order; the layer holds no
// membership at the end.
func TestChurn(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			n := 2
			if kind == "memory" {
				n = 1
			}
			ins := instances(t, env, kind, n)
			ctx := context.Background()
			var sent atomic.Int64 // the last message sent, numbered from 1
			stop := make(chan struct{})
			var senders sync.WaitGroup
			senders.Go(func() {
				for k := int64(1); ; k++ {
					select {
					case <-stop:
						return
					default:
					}
					if err := ins[int(k)%n].layer.Send(ctx, "churn", fmt.Appendf(nil, "%d", k)); err != nil {
						t.Errorf("send: %v", err)
						return
					}
					sent.Store(k)
					// A steady stream, not a flood that would outrun the
					// members' queues (that is TestSlowMember's).
					time.Sleep(50 * time.Microsecond)
				}
			})
			var members sync.WaitGroup
			for i := range 20 {
				members.Go(func() {
					l := ins[i%n].layer
					for range 10 {
						r := &recorder{}
						m := l.NewMember(r.handle, nil)
						if err := m.Join(ctx, "churn"); err != nil {
							t.Errorf("join: %v", err)
							return
						}
						if !waitFor(func() bool { return r.n.Load() > 0 }) {
							t.Error("no message after the join")
							m.Close()
							return
						}
						m.Leave("churn")
						after := sent.Load() // sent after the leave: beyond this
						time.Sleep(time.Millisecond)
						m.Close()
						prev := int64(0)
						for _, e := range r.got() {
							var k int64
							fmt.Sscan(string(e.Data), &k)
							if k <= prev {
								t.Errorf("got %d after %d: twice or out of order", k, prev)
							}
							if k > after+1 { // one may be under way as Leave returns
								t.Errorf("got %d, sent after the leave (%d sent then)", k, after)
							}
							prev = k
						}
					}
				})
			}
			members.Wait()
			close(stop)
			senders.Wait()
		})
	}
}

// A member that does not keep up is told once and dropped, at once, while
// its callback still holds an event (it may never return it: a client
// that reads nothing); the others get everything, and the sender is never
// held up.
func TestSlowMember(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			l := instances(t, env, kind, 1)[0].layer
			ctx := context.Background()
			block := make(chan struct{})
			var told atomic.Int64
			slow := l.NewMember(func(groups.Event) { <-block }, &groups.MemberOptions{
				MaxQueue: 10,
				OnSlow:   func() { told.Add(1) },
			})
			fast := &recorder{}
			fm := l.NewMember(fast.handle, nil)
			for _, m := range []*groups.Member{slow, fm} {
				if err := m.Join(ctx, "g"); err != nil {
					t.Fatal(err)
				}
			}
			const msgs = 100
			for k := range msgs {
				if err := l.Send(ctx, "g", fmt.Appendf(nil, "%d", k)); err != nil {
					t.Fatal(err)
				}
			}
			dbtest.Eventually(t, "the fast member to get all", func() bool { return fast.n.Load() == msgs })
			dbtest.Eventually(t, "the slow member, its callback blocked, to be told", func() bool { return told.Load() == 1 })
			if st := l.Stats(); st.Members != 1 || st.Groups != 1 {
				t.Errorf("with the slow member told: %d members in %d groups, want the fast one alone", st.Members, st.Groups)
			}
			close(block)
			slow.Close()
			fm.Close()
			if st := l.Stats(); st.Slow != 1 || told.Load() != 1 {
				t.Fatalf("slow %d, told %d; want 1, 1", st.Slow, told.Load())
			}
			if err := slow.Join(ctx, "g"); !errors.Is(err, groups.ErrClosed) {
				t.Fatalf("a slow member joins again: %v", err)
			}
		})
	}
}

// A panic in a member's callback is logged, with its stack, and the
// member goes on with its next event; Stats.Members counts the members in
// some group.
func TestMemberCallbackPanics(t *testing.T) {
	t.Parallel()
	logs, logger := dbtest.NewLogs()
	l, err := groups.New(groups.NewMemory(), &groups.Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	r := &recorder{}
	m := l.NewMember(func(e groups.Event) {
		if string(e.Data) == "boom" {
			panic("the callback's bug")
		}
		r.handle(e)
	}, nil)
	defer m.Close()
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Members != 1 {
		t.Fatalf("joined: %d members, want 1", st.Members)
	}
	for _, d := range []string{"boom", "after"} {
		if err := l.Send(ctx, "g", []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	dbtest.Eventually(t, "the event after the panic", func() bool { return r.n.Load() == 1 })
	if recs := logs.AtLeast(slog.LevelError); len(recs) != 1 || recs[0].Attrs["panic"] != "the callback's bug" || !strings.Contains(recs[0].Attrs["stack"], "member.go") {
		t.Errorf("the panic is not logged once, at Error, with its stack: %+v", recs)
	}
	m.Leave("g")
	if st := l.Stats(); st.Members != 0 {
		t.Errorf("after leaving its only group: %d members, want 0", st.Members)
	}
	if err := m.Join(ctx, "h"); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Members != 1 {
		t.Errorf("joined again: %d members, want 1", st.Members)
	}
}

// A send inside a transaction that rolls back reaches nobody, nor one in
// a nested Atomic that rolls back; one that commits reaches each member
// once. Stats.Sent counts what went out, whatever the engine: at the
// commit, none rolled back.
func TestSendInAtomic(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			in := instances(t, env, kind, 1)[0]
			ctx := context.Background()
			r := &recorder{}
			m := in.layer.NewMember(r.handle, nil)
			defer m.Close()
			if err := m.Join(ctx, "tx"); err != nil {
				t.Fatal(err)
			}
			sent := func() int64 { return in.layer.Stats().Sent }
			fail := errors.New("roll back")
			err := in.pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if err := in.layer.Send(ctx, "tx", []byte("rolled back")); err != nil {
						return err
					}
					return fail
				})
			})
			if !errors.Is(err, fail) {
				t.Fatal(err)
			}
			if n := sent(); n != 0 {
				t.Fatalf("Sent %d after a rolled-back send", n)
			}
			err = in.pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if err := in.layer.Send(ctx, "tx", []byte("committed")); err != nil {
						return err
					}
					if n := sent(); n != 0 {
						t.Errorf("Sent %d before the commit", n)
					}
					inner := dbctx.Atomic(ctx, func(ctx context.Context) error {
						if err := in.layer.Send(ctx, "tx", []byte("rolled back to its savepoint")); err != nil {
							return err
						}
						return fail
					})
					if !errors.Is(inner, fail) {
						return inner
					}
					return nil
				})
			})
			if err != nil {
				t.Fatal(err)
			}
			if n := sent(); n != 1 {
				t.Fatalf("Sent %d after the commit of one send, another rolled back to its savepoint", n)
			}
			// A marker after both: once it arrives, what came before has.
			if err := in.layer.Send(ctx, "tx", []byte("marker")); err != nil {
				t.Fatal(err)
			}
			dbtest.Eventually(t, "the marker", func() bool { return r.n.Load() >= 2 })
			got := r.got()
			if len(got) != 2 || string(got[0].Data) != "committed" || string(got[1].Data) != "marker" {
				t.Fatalf("got %q, want committed then marker", datas(got))
			}
			if n := sent(); n != 2 {
				t.Fatalf("Sent %d, want the 2 that went out", n)
			}
		})
	}
}

func datas(es []groups.Event) []string {
	var out []string
	for _, e := range es {
		out = append(out, string(e.Data))
	}
	return out
}

// The listener's backend is terminated: it reconnects by itself, members
// get a gap, and what is sent afterwards is delivered.
func TestListenerKilled(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ins := instances(t, env, "postgres", 2)
	ctx := context.Background()
	r := &recorder{}
	m := ins[0].layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if err := ins[1].layer.Send(ctx, "k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the first message", func() bool { return r.n.Load() == 1 })
	if n := env.Terminate(t); n < 2 {
		t.Fatalf("killed %d backends, want the two listeners at least", n)
	}
	dbtest.Eventually(t, "the gap", func() bool {
		for _, e := range r.got() {
			if e.Gap && e.Group == "k" {
				return true
			}
		}
		return false
	})
	dbtest.Eventually(t, "the listener back", func() bool { return ins[0].layer.Ready() == nil })
	if err := ins[1].layer.Send(ctx, "k", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message after the kill", func() bool {
		got := r.got()
		return len(got) > 0 && string(got[len(got)-1].Data) == "after"
	})
	if st := ins[0].layer.Stats(); st.Reconnects < 1 || st.Gaps < 1 {
		t.Fatalf("want a reconnect and a gap counted: %+v", st)
	}
}

// Names and sizes are checked; a message of any bytes arrives as sent.
func TestLimits(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := instances(t, env, "postgres", 1)[0]
	l := in.layer
	ctx := context.Background()
	for _, bad := range []string{"", "a b", "a|b", "é", strings.Repeat("x", 101)} {
		if err := l.Send(ctx, bad, nil); !errors.Is(err, groups.ErrGroupName) {
			t.Errorf("Send to %q: %v, want ErrGroupName", bad, err)
		}
		m := l.NewMember(func(groups.Event) {}, nil)
		if err := m.Join(ctx, bad); !errors.Is(err, groups.ErrGroupName) {
			t.Errorf("Join %q: %v, want ErrGroupName", bad, err)
		}
		m.Close()
	}
	if err := l.Send(ctx, "big", bytes.Repeat([]byte("x"), 1<<20)); !errors.Is(err, groups.ErrTooLarge) {
		t.Errorf("1 MiB: %v, want ErrTooLarge (the default MaxPayload is 1 MiB with the envelope)", err)
	}
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "bin"); err != nil {
		t.Fatal(err)
	}
	bin := []byte{0, 1, 2, 0xff, '|', 't'}
	text := []byte(strings.Repeat("é", 3000)) // 6000 bytes of UTF-8
	for _, data := range [][]byte{bin, text} {
		if err := l.Send(ctx, "bin", data); err != nil {
			t.Fatal(err)
		}
	}
	dbtest.Eventually(t, "both messages", func() bool { return r.n.Load() == 2 })
	got := r.got()
	if !bytes.Equal(got[0].Data, bin) || !bytes.Equal(got[1].Data, text) {
		t.Fatalf("got %q", datas(got))
	}
	dbtest.Eventually(t, "the queue usage sampled", func() bool {
		u := in.pg.Stats().QueueUsage
		return u >= 0 && u < 1
	})
}

// Mid-stream: a sender on one instance sends without pause while every
// backend of the test, both listeners among them, is terminated. Every
// member on both instances gets a gap, delivery resumes by itself, no
// member gets a message twice or out of order, and what was lost in the
// outage is counted (and logged). Small messages only, then every third
// one past NOTIFY's limit (through the table, its body read by the
// listener between waits).
func TestListenerKilledMidStream(t *testing.T) {
	t.Parallel()
	small := func(i int) []byte { return []byte(strconv.Itoa(i)) }
	mixed := func(i int) []byte {
		if i%3 != 0 {
			return small(i)
		}
		return append(strconv.AppendInt(nil, int64(i), 10), strings.Repeat(" ", 9000+i%20000)...)
	}
	for _, c := range []struct {
		name      string
		data      func(i int) []byte
		listeners bool // only the listeners' backends, found by application_name
	}{
		{"small", small, false},
		{"mixed", mixed, false},
		{"mixed-listeners", mixed, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			if !c.listeners {
				pgtest.SkipPooled(t, "terminates every backend of the test, the pool's behind the pooler among them")
			}
			killedMidStream(t, c.data, c.listeners)
		})
	}
}

func killedMidStream(t *testing.T, data func(i int) []byte, listenersOnly bool) {
	env := pgtest.New(t)
	listenDSN, err := pgserver.WithParams(env.DirectDSN(t), "application_name", env.AppName()+"_listener")
	if err != nil {
		t.Fatal(err)
	}
	ins := pgInstances(t, env, 2, &groups.PostgresOptions{ListenDSN: listenDSN})
	kill := func() int { return env.Terminate(t) }
	if listenersOnly {
		kill = func() int { return terminateApp(t, env, env.AppName()+"_listener") }
	}
	ctx := context.Background()
	const perInstance = 20
	recs := members(t, ins, perInstance, bigMembers, "stream")
	var sent, failed atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			// A failed send (its connection killed) is the sender's
			// to know about: counted, not lost silently.
			if ins[0].layer.Send(ctx, "stream", data(i)) != nil {
				failed.Add(1)
				continue
			}
			sent.Add(1)
		}
	}()
	dbtest.Eventually(t, "messages flowing", func() bool { return recs[len(recs)-1].n.Load() >= 20 })
	if n := kill(); n < 2 {
		t.Fatalf("killed %d backends, want the two listeners at least", n)
	}
	gap := func(r *recorder) bool {
		for _, e := range r.got() {
			if e.Gap {
				return true
			}
		}
		return false
	}
	dbtest.Eventually(t, "every member's gap", func() bool {
		for _, r := range recs {
			if !gap(r) {
				return false
			}
		}
		return true
	})
	dbtest.Eventually(t, "both listeners back", func() bool {
		return ins[0].layer.Ready() == nil && ins[1].layer.Ready() == nil
	})
	// Delivery resumes: a count of messages after recovery reaches all.
	after := make([]int64, len(recs))
	for i, r := range recs {
		after[i] = r.n.Load()
	}
	dbtest.Eventually(t, "delivery after the kill, everywhere", func() bool {
		for i, r := range recs {
			if r.n.Load() < after[i]+20 {
				return false
			}
		}
		return true
	})
	close(stop)
	<-done
	// The last messages in flight arrive (a marker sent last is the last
	// delivered), then each member is checked: increasing numbers
	// (nothing twice, nothing out of order).
	if err := ins[0].layer.Send(ctx, "stream", []byte("-1")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker everywhere", func() bool {
		for _, r := range recs {
			got := r.got()
			if len(got) == 0 || string(got[len(got)-1].Data) != "-1" {
				return false
			}
		}
		return true
	})
	var lost int64
	for i, r := range recs {
		prev := -1
		n := 0
		for _, e := range r.got() {
			if e.Gap || string(e.Data) == "-1" {
				continue
			}
			v, err := strconv.Atoi(strings.TrimRight(string(e.Data), " "))
			if err != nil || v <= prev {
				t.Fatalf("member %d: %q after %d: twice or out of order", i, e.Data, prev)
			}
			prev = v
			n++
		}
		if int64(n) > sent.Load() {
			t.Fatalf("member %d got %d messages of %d sent", i, n, sent.Load())
		}
		lost += sent.Load() - int64(n)
	}
	st0, st1 := ins[0].layer.Stats(), ins[1].layer.Stats()
	if st0.Reconnects < 1 || st1.Reconnects < 1 || st0.Gaps < perInstance || st1.Gaps < perInstance {
		t.Fatalf("want a reconnect and a gap per member counted on each instance: %+v, %+v", st0, st1)
	}
	pg0, pg1 := ins[0].pg.Stats(), ins[1].pg.Stats()
	if pg0.LargeMissing != 0 || pg1.LargeMissing != 0 {
		t.Fatalf("a row was gone: %+v, %+v", pg0, pg1)
	}
	if listenersOnly && failed.Load() != 0 {
		t.Fatalf("%d sends failed with only the listeners killed", failed.Load())
	}
	t.Logf("sent %d (%d sends failed, the sender told), deliveries missed in the outage %d of %d, reported to every member as a gap; large: %d sent, %d and %d read",
		sent.Load(), failed.Load(), lost, sent.Load()*int64(len(recs)), pg0.LargeSent, pg0.LargeReceived, pg1.LargeReceived)
}

// terminateApp terminates the backends of env's role whose
// application_name is app, waits until they are gone, and returns how
// many.
func terminateApp(t *testing.T, env *pgtest.Env, app string) int {
	t.Helper()
	ctx := context.Background()
	var pids []int64
	// Listed first, then terminated: PostgreSQL may call a function of a
	// WHERE clause before the other conditions.
	rows, err := env.Admin().QueryContext(ctx, `WITH l AS MATERIALIZED (SELECT pid FROM pg_stat_activity
		WHERE usename = $1 AND application_name = $2) SELECT pid FROM l WHERE pg_terminate_backend(pid)`, env.Role(), app)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var pid int64
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the backends gone", func() bool {
		var left int
		err := env.Admin().QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)`, pids).Scan(&left)
		return err == nil && left == 0
	})
	return len(pids)
}

// A send whose context carries a scope of another pool (another
// database: a request's under middleware.DB(replica, …)) still goes out
// through the engine's own pool, where the listeners are.
func TestSendWithAnotherPoolsScope(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ins := instances(t, env, "postgres", 2)
	other := dbtest.NewSecondPool(t, env, nil)
	ctx := context.Background()
	r := &recorder{}
	m := ins[1].layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "other"); err != nil {
		t.Fatal(err)
	}
	sctx, s := other.Scope(ctx)
	defer s.End()
	if err := ins[0].layer.Send(sctx, "other", []byte("through the engine's pool")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message", func() bool { return r.n.Load() == 1 })
	if st := other.Stats(); st.Acquired != 0 {
		t.Fatalf("the other pool's scope was used: %+v", st)
	}
}

// Inside an Atomic of another pool than the engine's, whose connection
// its NOTIFY cannot join, a Send goes out at that transaction's commit,
// and not at all where it rolls back (it went out at once, through the
// engine's pool: a rolled-back transaction's messages delivered), small
// or through the payload table.
func TestSendInAtomicOfAnotherPool(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := instances(t, env, "postgres", 1)[0]
	other := dbtest.NewSecondPool(t, env, nil)
	ctx := context.Background()
	r := &recorder{}
	m := in.layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "tx"); err != nil {
		t.Fatal(err)
	}
	fail := errors.New("roll back")
	for _, body := range []string{"rolled back", strings.Repeat("r", 9000)} {
		err := other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
					return err
				}
				if err := in.layer.Send(ctx, "tx", []byte(body)); err != nil {
					return err
				}
				return fail
			})
		})
		if !errors.Is(err, fail) {
			t.Fatal(err)
		}
	}
	err := other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			return in.layer.Send(ctx, "tx", []byte("committed"))
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	committedThenMarker(t, in.layer, r)
}

// A Send at the commit of another pool's Atomic whose publish fails
// once that Atomic has committed (here the INSERT of a large message,
// refused by a CHECK; a pool role without INSERT on the table, a full
// NOTIFY queue, the engine's pool unreachable) gives every member a gap in
// its place: the message was dropped with a WARN alone, and Atomic, which
// committed, returned nil.
func TestSendAtCommitFailsGap(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := instances(t, env, "postgres", 1)[0]
	other := dbtest.NewSecondPool(t, env, nil)
	ctx := context.Background()
	if _, err := env.Admin().ExecContext(ctx, "ALTER TABLE "+env.Schema()+
		".dbscope_groups_payloads ADD CONSTRAINT refused CHECK (length(body) < 15000)"); err != nil {
		t.Fatal(err)
	}
	r := &recorder{}
	m := in.layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "tx"); err != nil {
		t.Fatal(err)
	}
	err := other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			return in.layer.Send(ctx, "tx", []byte(strings.Repeat("r", 20000)))
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.layer.Send(ctx, "tx", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker", func() bool { return r.n.Load() >= 2 || events(r) == "marker" })
	if got := events(r); got != "gap,marker" {
		t.Fatalf("got %q, want a gap, then the marker", got)
	}
	if st := in.layer.Stats(); st.Sent != 1 || st.Gaps != 1 {
		t.Errorf("Sent %d, Gaps %d: want 1 (the marker), 1", st.Sent, st.Gaps)
	}
}

// Over PostgreSQL, a gap owed (a Send at another pool's commit whose
// publish failed, the engine's pool busy, and its gap with it) goes out
// at the next send the engine's pool carries, as the layer's doc says:
// a Send without a scope, or in the engine's pool's transaction once it
// commits (never in one that rolls back). It was paid only by a send
// through another pool or a reconnection of the listener, which stays up
// while the pool is busy: with every later Send through the engine's pool
// the message was lost without a gap.
func TestOwedGapPaidByEngineSend(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	p := dbctx.New(env.Open(t), &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1, TransactionPooling: pgtest.Pooled()})
	defer p.Close()
	l, err := groups.New(groups.NewPostgres(p, &groups.PostgresOptions{
		ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), MaxPayload: 7999}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	other := dbtest.NewSecondPool(t, env, nil)
	ctx := context.Background()
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "tx"); err != nil {
		t.Fatal(err)
	}
	// The engine's pool's only slot is taken: the publish at the other
	// pool's commit, and its gap, get ErrBusy.
	sendAtCommitEngineBusy(t, p, other, l, "tx")
	// A Send in the engine's pool's transaction, rolled back: nothing
	// goes out, the gap stays owed.
	rollback := errors.New("roll back")
	err = p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			if err := l.Send(ctx, "tx", []byte("rolled back")); err != nil {
				return err
			}
			return rollback
		})
	})
	if !errors.Is(err, rollback) {
		t.Fatal(err)
	}
	if err := l.Send(ctx, "tx", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker and the gap", func() bool { return r.n.Load() >= 2 })
	time.Sleep(100 * time.Millisecond)
	if got := events(r); got != "marker,gap" {
		t.Fatalf("got %q, want the marker, then the gap owed", got)
	}
	if st := l.Stats(); st.Sent != 1 || st.Gaps != 1 {
		t.Errorf("Sent %d, Gaps %d: want 1 (the marker), 1", st.Sent, st.Gaps)
	}
}

// A layer closed while it owes a gap (a Send at another pool's commit
// whose publish failed, and its gap with it, the engine's pool busy)
// pays it as it closes: members on other instances were never told of
// the lost message.
func TestOwedGapPaidAtClose(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	b := instances(t, env, "postgres", 1)[0]
	r := &recorder{}
	m := b.layer.NewMember(r.handle, nil)
	defer m.Close()
	ctx := context.Background()
	if err := m.Join(ctx, "tx"); err != nil {
		t.Fatal(err)
	}
	p := dbctx.New(env.Open(t), &dbctx.Options{MaxWorkers: 1, MaxWaiting: -1, TransactionPooling: pgtest.Pooled()})
	defer p.Close()
	a, err := groups.New(groups.NewPostgres(p, &groups.PostgresOptions{
		ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), MaxPayload: 7999}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	other := dbtest.NewSecondPool(t, env, nil)
	sendAtCommitEngineBusy(t, p, other, a, "tx")
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the gap owed", func() bool { return r.n.Load() >= 1 })
	if got := events(r); got != "gap" {
		t.Fatalf("got %q, want the gap owed", got)
	}
}

// committedThenMarker sends a marker to group tx, and checks that r got
// the message committed, then the marker, and nothing else.
func committedThenMarker(t *testing.T, l *groups.Layer, r *recorder) {
	t.Helper()
	if err := l.Send(context.Background(), "tx", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker", func() bool {
		got := r.got()
		return len(got) > 0 && string(got[len(got)-1].Data) == "marker"
	})
	if got := datas(r.got()); len(got) != 2 || got[0] != "committed" {
		t.Fatalf("got %d messages (%.20q), want committed then marker", len(got), got)
	}
}

// A Send through a scope of one pool nested in an Atomic of another (a
// Do of the engine's pool inside another pool's Atomic, or the reverse)
// waits for that Atomic: nothing is delivered where it rolls back, and
// the message goes out once it commits.
func TestSendInNestedScopes(t *testing.T) {
	t.Parallel()
	for _, kind := range kinds {
		for _, engineOuter := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/engine's Atomic outside %v", kind, engineOuter), func(t *testing.T) {
				t.Parallel()
				env := pgtest.New(t)
				in := instances(t, env, kind, 1)[0]
				other := dbtest.NewSecondPool(t, env, nil)
				ctx := context.Background()
				r := &recorder{}
				m := in.layer.NewMember(r.handle, nil)
				defer m.Close()
				if err := m.Join(ctx, "tx"); err != nil {
					t.Fatal(err)
				}
				outer, inner := other, in.pool
				if engineOuter {
					outer, inner = in.pool, other
				}
				fail := errors.New("roll back")
				for _, body := range []string{"rolled back", "committed"} {
					var sent bool
					err := outer.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
						return dbctx.Atomic(ctx, func(ctx context.Context) error {
							if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
								return err
							}
							if err := inner.Do(ctx, func(ctx context.Context, _ *dbctx.Scope) error {
								return in.layer.Send(ctx, "tx", []byte(body))
							}); err != nil {
								return err
							}
							// Not yet: the Atomic around has not committed.
							sent = len(r.got()) > 0 || in.layer.Stats().Sent > 0
							if body == "rolled back" {
								return fail
							}
							return nil
						})
					})
					if body == "rolled back" && !errors.Is(err, fail) || body == "committed" && err != nil {
						t.Fatal(err)
					}
					if sent {
						t.Errorf("%q went out before the Atomic around its scope ended", body)
					}
				}
				committedThenMarker(t, in.layer, r)
			})
		}
	}
}

// A member's goroutine waits a moment for the next event, then exits: an
// idle member holds no goroutine, and the layer's sweep stops too. Close
// ends a waiting goroutine at once.
func TestIdleMemberHoldsNoGoroutine(t *testing.T) {
	t.Parallel()
	l := instances(t, pgtest.New(t), "memory", 1)[0].layer
	ctx := context.Background()
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	send := func(n int64) {
		t.Helper()
		for range n {
			if err := l.Send(ctx, "g", []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(10)
	dbtest.Eventually(t, "10 events", func() bool { return r.n.Load() == 10 })
	dbtest.Eventually(t, "the member's goroutine to exit", func() bool { return !m.Running() })
	dbtest.Eventually(t, "the sweep to stop", func() bool { return !l.Sweeping() })
	send(1)
	dbtest.Eventually(t, "the 11th event", func() bool { return r.n.Load() == 11 })
	m.Close()
	if m.Running() {
		t.Fatal("the goroutine runs after Close returned")
	}
	dbtest.Eventually(t, "the sweep to stop after Close", func() bool { return !l.Sweeping() })
}

// A member whose queue never empties keeps an array of the size of what
// waits, not of all it has had.
func TestBusyMemberQueueBounded(t *testing.T) {
	t.Parallel()
	l := instances(t, pgtest.New(t), "memory", 1)[0].layer
	ctx := context.Background()
	step := make(chan struct{})
	var got atomic.Int64
	m := l.NewMember(func(groups.Event) { <-step; got.Add(1) }, &groups.MemberOptions{MaxQueue: 16})
	defer m.Close()
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		if err := l.Send(ctx, "g", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	const n = 2000
	for range n {
		if err := l.Send(ctx, "g", []byte("x")); err != nil {
			t.Fatal(err)
		}
		step <- struct{}{}
	}
	if c := m.QueueCap(); c > 32 {
		t.Fatalf("the queue's array holds %d events, for at most 16 waiting", c)
	}
	for range 8 {
		step <- struct{}{}
	}
	dbtest.Eventually(t, "every event", func() bool { return got.Load() == n+8 })
}

// sendAtCommitEngineBusy holds the only slot of p, the engine's pool,
// while an Atomic of other sends "lost" to group through l at its commit:
// the publish, and its gap, get ErrBusy; the Atomic itself commits.
func sendAtCommitEngineBusy(t *testing.T, p, other *dbctx.Pool, l *groups.Layer, group string) {
	t.Helper()
	ctx := context.Background()
	hold, held, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error { close(held); <-hold; return nil })
	}()
	<-held
	err := other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SELECT 1"); err != nil {
				return err
			}
			return l.Send(ctx, group, []byte("lost"))
		})
	})
	close(hold)
	<-done
	if err != nil {
		t.Fatal(err)
	}
}
