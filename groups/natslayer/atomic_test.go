package natslayer_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// NATS is not transactional: a Send inside dbctx.Atomic is published
// once the transaction has committed, and never if it rolls back.
func TestSendInAtomic(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	in := instances(t, srv, 1, nil)[0]
	pool, _ := dbtest.NewPool(t, nil)
	ctx := context.Background()
	r := &recorder{}
	m := in.layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "tx"); err != nil {
		t.Fatal(err)
	}
	sent := func() int64 { return in.layer.Stats().Sent }

	fail := errors.New("roll back")
	err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "CREATE TABLE t (x int)"); err != nil {
				return err
			}
			if err := in.layer.Send(ctx, "tx", []byte("rolled back")); err != nil {
				return err
			}
			if n := sent(); n != 0 {
				t.Errorf("published inside the transaction: %d sent", n)
			}
			return fail
		})
	})
	if !errors.Is(err, fail) {
		t.Fatal(err)
	}
	if n := sent(); n != 0 {
		t.Fatalf("published on rollback: %d sent", n)
	}
	err = pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			if err := in.layer.Send(ctx, "tx", []byte("committed")); err != nil {
				return err
			}
			if n := sent(); n != 0 {
				t.Errorf("published before the commit: %d sent", n)
			}
			return nil
		})
		if n := sent(); err == nil && n != 1 {
			t.Errorf("after the commit: %d sent, want 1", n)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// A marker after both: once it arrives, what came before has.
	if err := in.layer.Send(ctx, "tx", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the marker", func() bool { return r.n.Load() >= 2 })
	if got := r.messages(); !slices.Equal(got, []string{"committed", "marker"}) {
		t.Fatalf("got %q, want committed then marker", got)
	}
}
