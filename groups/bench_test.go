package groups_test

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/dbscope/dbscope/groups"
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
