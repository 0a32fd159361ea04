package natslayer_test

import (
	"bytes"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// TestMain checks with goleak that no goroutine outlives the tests
// (pgtest.Main). Every test here needs a nats-server: without one, and
// outside CI, the package is skipped as a whole.
func TestMain(m *testing.M) {
	if _, err := natstest.Binary(); err != nil && os.Getenv("CI") == "" {
		fmt.Printf("natslayer: skipping the tests: %v\n", err)
		os.Exit(0)
	}
	pgtest.Main(m)
}

// instance is one server instance: its own NATS connection (named
// instance-<i>, as the server's monitoring shows it), engine and layer.
type instance struct {
	name   string
	engine *natslayer.Engine
	layer  *groups.Layer
}

// instances starts n instances on srv, closed at the test's end with
// their layers checked empty and their subscriptions gone.
func instances(t *testing.T, srv *natstest.Server, n int, opts *natslayer.Options) []*instance {
	t.Helper()
	log := testLogger(t)
	var out []*instance
	for i := range n {
		var o natslayer.Options
		if opts != nil {
			o = *opts
		}
		o.Name = fmt.Sprintf("instance-%d", i)
		o.Logger = log
		e, err := natslayer.Connect(srv.URL, &o)
		if err != nil {
			t.Fatal(err)
		}
		l, err := groups.New(e, &groups.Options{Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if st := l.Stats(); st.Members != 0 || st.Groups != 0 {
				t.Errorf("%s: layer not empty at the end: %+v", o.Name, st)
			}
			if st := e.Stats(); st.Subscriptions != 0 {
				t.Errorf("%s: engine subscribed at the end: %+v", o.Name, st)
			}
			l.Close()
		})
		out = append(out, &instance{name: o.Name, engine: e, layer: l})
	}
	return out
}

// testLogger returns a logger that writes to t's log while t runs and
// drops what nats.go's callbacks log after it ended.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(w.stop) // registered first: runs last
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	mu   sync.Mutex
	t    *testing.T
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *testWriter) stop() {
	w.mu.Lock()
	w.done = true
	w.mu.Unlock()
}

// recorder is a member's callback that keeps what it got.
type recorder struct {
	mu     sync.Mutex
	events []groups.Event
	n      atomic.Int64 // messages (not gaps)
	gaps   atomic.Int64
}

func (r *recorder) handle(e groups.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	if e.Gap {
		r.gaps.Add(1)
	} else {
		r.n.Add(1)
	}
}

func (r *recorder) got() []groups.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]groups.Event(nil), r.events...)
}

// messages returns the data of the messages got, gaps left out.
func (r *recorder) messages() []string {
	var out []string
	for _, e := range r.got() {
		if !e.Gap {
			out = append(out, string(e.Data))
		}
	}
	return out
}

// eventually polls cond until it holds, failing t after 20 seconds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !waitFor(cond) {
		t.Fatalf("timed out waiting for %s", what)
	}
}

// waitFor polls cond for up to 20 seconds and reports whether it held:
// for goroutines other than the test's, which must not call t.Fatal.
func waitFor(cond func() bool) bool {
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

// eventuallyWhileProgress polls cond until it holds, failing t once
// progress has not moved for 20 seconds: a bulk delivery on a loaded
// machine may take longer than any fixed bound, a lost one stalls.
func eventuallyWhileProgress(t *testing.T, what string, cond func() bool, progress func() int64) {
	t.Helper()
	last, moved := progress(), time.Now()
	for !cond() {
		if p := progress(); p != last {
			last, moved = p, time.Now()
		} else if time.Since(moved) > 20*time.Second {
			t.Fatalf("timed out waiting for %s: no progress for 20 s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// await waits for ch to be closed, failing t after 20 seconds.
func await(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// seqs checks that the messages "<sender>:<seq>" of one group come in
// increasing seq per sender (nothing twice, nothing out of order) and
// returns the last seq of each sender.
func seqs(t *testing.T, who string, msgs []string) map[string]int {
	t.Helper()
	last := map[string]int{}
	for _, m := range msgs {
		sender, seq, ok := parse(m)
		if !ok {
			t.Fatalf("%s got %q", who, m)
		}
		if prev, seen := last[sender]; seen && seq <= prev {
			t.Fatalf("%s got %s:%d after %s:%d: twice or out of order", who, sender, seq, sender, prev)
		}
		last[sender] = seq
	}
	return last
}

func parse(m string) (sender string, seq int, ok bool) {
	sender, n, ok := strings.Cut(m, ":")
	if !ok {
		return "", 0, false
	}
	_, err := fmt.Sscan(n, &seq)
	return sender, seq, err == nil
}

// payload returns "<sender>:<seq>" padded with spaces to size bytes.
func payload(sender string, seq, size int) []byte {
	b := fmt.Appendf(nil, "%s:%d", sender, seq)
	if len(b) < size {
		b = append(b, bytes.Repeat([]byte(" "), size-len(b))...)
	}
	return b
}
