package groups_test

import (
	"context"
	"runtime"
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
