package patient_test

import (
	"context"
	"testing"

	"github.com/dbscope/dbscope/internal/patient"
)

// afterFuncs is a parent context that schedules its own after-functions,
// as a socket's context does.
type afterFuncs struct {
	context.Context
	done chan struct{}
	n    int
}

func (c *afterFuncs) Done() <-chan struct{} { return c.done }

func (c *afterFuncs) AfterFunc(f func()) func() bool {
	c.n++
	return func() bool { return true }
}

// The mark is seen through children, and AfterFunc goes to a parent that
// has one rather than start a goroutine.
func TestWith(t *testing.T) {
	parent := &afterFuncs{Context: context.Background(), done: make(chan struct{})}
	if patient.Is(parent) {
		t.Fatal("an unmarked context is patient")
	}
	ctx := patient.With(parent)
	context.AfterFunc(ctx, func() {})
	if parent.n != 1 {
		t.Fatalf("AfterFunc reached the parent %d times, want 1", parent.n)
	}
	child, cancel := context.WithCancel(ctx)
	defer cancel()
	if !patient.Is(ctx) || !patient.Is(child) {
		t.Fatal("the mark is not seen")
	}
	if parent.n != 2 {
		t.Fatalf("a cancelable child registered with the parent %d times, want once", parent.n-1)
	}
}
