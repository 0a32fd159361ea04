package dbctx_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
)

// A nested Atomic whose own context (a deadline of its own) has ended by
// its end returns the context's error, its OnCommit functions unrun,
// whether or not its function ran a statement, as the outermost one
// does; its work rolls back to its savepoint and the outer transaction
// goes on. Without a statement it returned nil (its savepoint, now sent
// lazily, was never sent) and its OnCommit functions ran at the outer
// commit; with one, its RELEASE, sent with the ended context, failed and
// doomed the outer transaction, which the outer function could not
// handle.
func TestNestedAtomicContextEnded(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, nil)
	table := env.Schema() + ".t"
	mustExec(t, env.Admin(), "CREATE TABLE "+table+" (n int)")
	for _, statement := range []bool{false, true} {
		ctx, s := p.Scope(context.Background())
		ran := false
		var nerr error
		err := dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "INSERT INTO "+table+" VALUES (1)"); err != nil {
				return err
			}
			nctx, cancel := context.WithCancel(ctx)
			defer cancel()
			nerr = dbctx.Atomic(nctx, func(ctx context.Context) error {
				if statement {
					if _, err := s.ExecContext(ctx, "INSERT INTO "+table+" VALUES (2)"); err != nil {
						return err
					}
				}
				dbctx.OnCommit(ctx, func() { ran = true })
				cancel() // its deadline passes
				return nil
			})
			return nil
		})
		s.End()
		if !errors.Is(nerr, context.Canceled) || ran {
			t.Errorf("statement run: %v: the nested Atomic returned %v, OnCommit ran: %v; want context.Canceled, not run", statement, nerr, ran)
		}
		if err != nil {
			t.Errorf("statement run: %v: the outer Atomic: %v, want nil (it handled the nested one's error)", statement, err)
		}
		if got := committedNs(t, env.Admin(), table); !slices.Equal(got, []int{1}) {
			t.Errorf("statement run: %v: rows committed %v, want [1]: the outer's, the nested one's rolled back", statement, got)
		}
		mustExec(t, env.Admin(), "TRUNCATE "+table)
	}
}
