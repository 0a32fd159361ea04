package dbctx_test

import (
	"context"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
)

// Detach ends every scope a context carries (a reserved slot and a
// pinned connection given back at once) and hides them; the owners' End
// is then a no-op. Inside Atomic it ends nothing and says so.
func TestDetach(t *testing.T) {
	t.Parallel()
	p1, env := dbtest.NewPool(t, nil)
	p2 := dbtest.NewSecondPool(t, env, nil)
	ctx, s2 := p2.Scope(context.Background())
	ctx, s1 := p1.Scope(ctx)
	defer s2.End()
	defer s1.End()
	if err := s1.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := s2.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := dbctx.Atomic(ctx, func(actx context.Context) error {
		if _, ok := dbctx.Detach(actx); ok {
			t.Error("Detach inside Atomic reported ok")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if p1.Stats().InUse != 1 || p2.Stats().InUse != 1 {
		t.Fatalf("before Detach: in use %d, %d; want 1, 1", p1.Stats().InUse, p2.Stats().InUse)
	}
	d, ok := dbctx.Detach(ctx)
	if !ok {
		t.Fatal("Detach: not ok")
	}
	if dbctx.From(d) != nil || p1.From(d) != nil || p2.From(d) != nil {
		t.Error("the detached context carries a scope")
	}
	if p1.Stats().InUse != 0 || p2.Stats().InUse != 0 {
		t.Errorf("after Detach: in use %d, %d; want 0, 0", p1.Stats().InUse, p2.Stats().InUse)
	}
	if err := s1.QueryRowContext(ctx, "SELECT 1").Scan(&n); err == nil {
		t.Error("a detached scope ran a statement")
	}
	inner, s3 := p1.Scope(d)
	defer s3.End()
	if err := dbctx.From(inner).QueryRowContext(inner, "SELECT 1").Scan(&n); err != nil {
		t.Errorf("a scope made from the detached context: %v", err)
	}
}

// Detach of an Async context (which answers From with its pool's async
// scope) finds the scopes under it: inside Atomic it ends nothing and
// says so; otherwise it ends them (it hid them, and ended none).
func TestDetachAsync(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	ctx, s := p.Scope(context.Background())
	defer s.End()
	if err := s.Reserve(ctx); err != nil {
		t.Fatal(err)
	}
	if err := dbctx.Atomic(ctx, func(actx context.Context) error {
		if _, ok := dbctx.Detach(dbctx.Async(actx)); ok {
			t.Error("Detach of an Async context inside Atomic reported ok")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	d, ok := dbctx.Detach(dbctx.Async(ctx))
	if !ok || dbctx.From(d) != nil || p.From(d) != nil {
		t.Fatalf("Detach(Async(ctx)): ok %v, a scope left %v", ok, dbctx.From(d) != nil || p.From(d) != nil)
	}
	if n := p.Stats().InUse; n != 0 {
		t.Errorf("after Detach: %d slots in use, want 0", n)
	}
}
