package groups_test

import (
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// slowClose is the memory engine with a Close that waits for its gate
// (a listener finishing, a flush to NATS) and says it has begun.
type slowClose struct {
	*groups.Memory
	entered, gate chan struct{}
}

func (e slowClose) Close() error {
	close(e.entered)
	<-e.gate
	return e.Memory.Close()
}

// A second Close, while the first one closes the engine, returns once
// the engine is closed, as the first does: it returned at once, so that
// its caller went on (closed the pool, exited) with the engine still
// running and the gaps owed not yet out.
func TestCloseTwiceWaits(t *testing.T) {
	t.Parallel()
	e := slowClose{Memory: groups.NewMemory(), entered: make(chan struct{}), gate: make(chan struct{})}
	l, err := groups.New(e, nil)
	if err != nil {
		t.Fatal(err)
	}
	first := make(chan error, 1)
	go func() { first <- l.Close() }()
	<-e.entered
	second := make(chan error, 1)
	go func() { second <- l.Close() }()
	select {
	case <-second:
		close(e.gate)
		<-first
		t.Fatal("the second Close returned while the first was closing the engine")
	case <-time.After(50 * time.Millisecond):
	}
	close(e.gate)
	dbtest.NoHang(t, "both Closes", func() {
		if err := <-first; err != nil {
			t.Error(err)
		}
		if err := <-second; err != nil {
			t.Error(err)
		}
	})
}
