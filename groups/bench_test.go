package groups_test

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// BenchmarkIdleMembers reports what an idle member of a group costs the
// layer (the Member and its place in the group's map; no goroutine): 10,000
// members of one group on the memory engine.
//
//	go test -run x -bench IdleMembers -benchtime 1x ./groups
func BenchmarkIdleMembers(b *testing.B) {
	const n = 10000
	l, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	for b.Loop() {
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	goroutines := runtime.NumGoroutine()
	ms := make([]*groups.Member, n)
	for i := range ms {
		ms[i] = l.NewMember(func(groups.Event) {}, nil)
		if err := ms[i].Join(ctx, "big"); err != nil {
			b.Fatal(err)
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "bytes/member")
	b.ReportMetric(float64(runtime.NumGoroutine()-goroutines), "goroutines")
	for _, m := range ms {
		m.Close()
	}
}

// BenchmarkPostgresPayload prices a message through NOTIFY (1 KB, the
// baseline) and through the table (64 KB, 1 MiB): four senders on one
// instance, a member on each of two instances (each with its listener),
// every message delivered to both before the clock stops. ns/op is per
// message sent; deliveries/s and MB/s count what the members got.
//
//	go test -run x -bench PostgresPayload -benchtime 200x ./groups
func BenchmarkPostgresPayload(b *testing.B) {
	for _, size := range []int{1 << 10, 64 << 10, 1 << 20} {
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			env := pgtest.New(b)
			ins := pgInstances(b, env, 2, &groups.PostgresOptions{MaxPayload: 2 << 20})
			ctx := context.Background()
			var got atomic.Int64
			for _, in := range ins {
				m := in.layer.NewMember(func(groups.Event) { got.Add(1) }, &groups.MemberOptions{MaxBytes: 1 << 30})
				defer m.Close()
				if err := m.Join(ctx, "bench"); err != nil {
					b.Fatal(err)
				}
			}
			data := bytes.Repeat([]byte("x"), size)
			const senders = 4
			b.ReportAllocs()
			b.ResetTimer()
			var wg sync.WaitGroup
			for s := range senders {
				wg.Go(func() {
					for i := s; i < b.N; i += senders {
						if err := ins[0].layer.Send(ctx, "bench", data); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			if err := dbtest.Wait(time.Minute, func() bool { return got.Load() == 2*int64(b.N) }); err != nil {
				b.Fatalf("%d of %d deliveries", got.Load(), 2*b.N)
			}
			b.StopTimer()
			sec := b.Elapsed().Seconds()
			b.ReportMetric(float64(2*b.N)/sec, "deliveries/s")
			b.ReportMetric(float64(2*b.N*size)/sec/1e6, "MB/s")
			if st := ins[1].pg.Stats(); size > 8000 && st.LargeReceived != int64(b.N) {
				b.Errorf("the other instance read %d bodies, want %d", st.LargeReceived, b.N)
			}
		})
	}
}

// BenchmarkFanOut is one message to a group of 100 members on the memory
// engine, each member's callback doing nothing, the next message sent once
// every member has had the last (closed loop): the layer's own cost per
// delivery (ns/delivery) and its allocations per message (allocs/op).
//
//	go test -run x -bench FanOut -benchmem ./groups
func BenchmarkFanOut(b *testing.B) {
	const n = 100
	l, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	var got atomic.Int64
	done := make(chan struct{}, 1)
	for range n {
		m := l.NewMember(func(groups.Event) {
			if got.Add(1)%n == 0 {
				done <- struct{}{}
			}
		}, nil)
		if err := m.Join(ctx, "g"); err != nil {
			b.Fatal(err)
		}
		defer m.Close()
	}
	data := []byte(`{"id":1,"seq":1}`)
	b.ReportAllocs()
	for b.Loop() {
		if err := l.Send(ctx, "g", data); err != nil {
			b.Fatal(err)
		}
		<-done
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/delivery")
}
