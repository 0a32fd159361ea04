package dbctx_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// Statements run with the scope's own context are watched by the scope,
// not by database/sql and pgx (see cancel.go). These tests cancel that
// context while a statement is reading, in each kind of statement, and
// check what TestCancelMidQuery checks for Exec: the caller gets
// context.Canceled, the server stops the statement, the connection is
// discarded and nothing is held.
func TestCancelScopeContext(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "cancels statements mid-flight; PgBouncer 1.18 crashes on the cancel request (server_proto: server in bad state)")
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context, s *dbctx.Scope) error
	}{
		{"exec", func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT pg_sleep(30)")
			return err
		}},
		{"row", func(ctx context.Context, s *dbctx.Scope) error {
			var v string
			return s.QueryRowContext(ctx, "SELECT pg_sleep(30)::text").Scan(&v)
		}},
		{"rows", func(ctx context.Context, s *dbctx.Scope) error {
			// The first row arrives, the server sleeps before the second.
			rows, err := s.QueryContext(ctx, "SELECT x, pg_sleep(CASE WHEN x = 2 THEN 30 ELSE 0 END)::text FROM generate_series(1, 3) x")
			if err != nil {
				return err
			}
			defer rows.Close()
			n := 0
			for rows.Next() {
				n++
			}
			if n != 1 {
				t.Errorf("read %d rows before the cancel took effect, want 1", n)
			}
			return rows.Err()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, env := newPool(t, nil)
			ctx, cancel := context.WithCancel(context.Background())
			ctx, s := p.Scope(ctx)
			defer s.End()
			canceled := dbtest.WhenActive(t, env, "SELECT", cancel)
			err := tc.run(ctx, s)
			<-canceled
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("got %v, want context.Canceled", err)
			}
			eventually(t, "the statement to stop on the server", func() bool { return activeQueries(t, env, "SELECT") == 0 })
			if err := dbctx.CloseOld(ctx); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Pinned != 0 || st.InUse != 0 || st.Discarded.Canceled != 1 {
				t.Fatalf("after the cancel: %+v, want nothing held and one canceled discard", st)
			}
		})
	}
}

// The scope's context ending while its connection is pinned but idle
// fails nothing: a statement run next with a context that is still live
// works on the same connection, which is then given back, not discarded.
// And a scope that has ended leaves its connection alone when its
// context ends: the next scope to get that connection uses it normally.
func TestCancelIdleScope(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	base, cancel := context.WithCancel(context.Background())
	ctx, s := p.Scope(base)
	pid, err := backendPID(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	eventually(t, "the scope to see its context end", s.WatchFired)
	live := context.WithoutCancel(ctx)
	if again, err := backendPID(live, s); err != nil || again != pid {
		t.Fatalf("after the cancel: pid %d, %v; want %d, nil", again, err, pid)
	}
	s.End()

	base, cancel = context.WithCancel(context.Background())
	ctx, s = p.Scope(base)
	if _, err := backendPID(ctx, s); err != nil {
		t.Fatal(err)
	}
	s.End()
	cancel()
	ctx, s = p.Scope(context.Background())
	defer s.End()
	if again, err := backendPID(ctx, s); err != nil || again != pid {
		t.Fatalf("next scope: pid %d, %v; want %d (the same connection), nil", again, err, pid)
	}
	if st := p.Stats(); st.Discarded != (dbctx.Discards{}) {
		t.Errorf("discards = %+v, want none", st.Discarded)
	}
}

// valueCtx is a context type that cannot be compared.
type valueCtx struct {
	context.Context
	tags []string
}

// Statements may come with contexts of a type that cannot be compared:
// the scope must not compare them (it would panic).
func TestUncomparableContext(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, nil)
	base, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctx, s := p.Scope(base)
	defer s.End()
	for i := range 2 {
		if _, err := queryInt(valueCtx{ctx, []string{"x"}}, s, "SELECT $1::int", i); err != nil {
			t.Fatal(err)
		}
	}
}
