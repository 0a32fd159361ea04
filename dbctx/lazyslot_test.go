package dbctx_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/lazyslot"
)

// A sync consumer's event (internal/lazyslot) runs as Do on the socket's
// scope, but takes its slot at its first statement: one that runs none
// does not wait for a slot held elsewhere; one that does holds it until
// the end, nested Do included; the boundaries and the panic are Do's.
func TestLazySlot(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	ctx, sc := p.Scope(context.Background())
	t.Cleanup(sc.End)
	inUse := func(want int) error {
		if st := p.Stats(); st.InUse != want {
			return fmt.Errorf("%d slots in use, want %d", st.InUse, want)
		}
		return nil
	}

	// Another unit of work holds the only slot: no statement, no wait.
	held, release := make(chan struct{}), make(chan struct{})
	go p.Do(context.Background(), func(context.Context, *dbctx.Scope) error {
		close(held)
		<-release
		return nil
	})
	<-held
	ran := false
	if err := lazyslot.Do(ctx, sc, func(context.Context) error { ran = true; return inUse(1) }); err != nil || !ran {
		t.Fatalf("without a statement: ran %v, %v", ran, err)
	}
	close(release)
	dbtest.Eventually(t, "the other unit's slot to be free", func() bool { return p.Stats().InUse == 0 })

	// The first statement takes the slot, held to the end, nested Do on it.
	err := lazyslot.Do(ctx, sc, func(ctx context.Context) error {
		if err := inUse(0); err != nil {
			return err
		}
		s := dbctx.From(ctx)
		before, err := backendPID(ctx, s)
		if err != nil {
			return err
		}
		if err := inUse(1); err != nil {
			return err
		}
		return dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			after, err := backendPID(ctx, s)
			if err == nil && after != before {
				err = errors.New("the nested Do ran on another connection")
			}
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
		t.Fatalf("after: %d slots, %d pinned; want 0, 0", st.InUse, st.Pinned)
	}

	// A panic discards the connection and becomes a PanicError.
	err = lazyslot.Do(ctx, sc, func(ctx context.Context) error {
		if _, err := backendPID(ctx, dbctx.From(ctx)); err != nil {
			return err
		}
		panic("boom")
	})
	var pe *dbctx.PanicError
	if !errors.As(err, &pe) || pe.Value != "boom" {
		t.Fatalf("got %v, want a PanicError", err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 || st.Discarded.Panic != 1 {
		t.Fatalf("after the panic: %d slots, %d pinned, %d discarded; want 0, 0, 1", st.InUse, st.Pinned, st.Discarded.Panic)
	}

	// An ended scope refuses, as its statements would.
	sc.End()
	if err := lazyslot.Do(ctx, sc, func(context.Context) error { return nil }); !errors.Is(err, dbctx.ErrScopeEnded) {
		t.Fatalf("on an ended scope: %v, want ErrScopeEnded", err)
	}
}
