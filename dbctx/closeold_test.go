package dbctx_test

import (
	"context"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// A transaction user code leaves open is rolled back at the boundary,
// whether begun with BeginTx, in raw SQL or on the raw connection.
func TestTxLeftOpen(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name  string
		begin func(ctx context.Context, s *dbctx.Scope) error
	}{
		{"BeginTx", func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.BeginTx(ctx, nil)
			return err
		}},
		{"raw BEGIN", func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "BEGIN")
			return err
		}},
		{"aborted", func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "BEGIN"); err != nil {
				return err
			}
			s.ExecContext(ctx, "SELECT 1/0")
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
			ctx := context.Background()
			err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				if err := tc.begin(ctx, s); err != nil {
					return err
				}
				s.ExecContext(ctx, "INSERT INTO t VALUES (1)")
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n := env.IdleInTransaction(t); n != 0 {
				t.Fatalf("%d connections idle in transaction after the boundary", n)
			}
			n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
				return queryInt(ctx, s, "SELECT count(*) FROM t")
			})
			if err != nil || n != 0 {
				t.Fatalf("rows after rollback: %d, %v; want 0", n, err)
			}
			if st := p.Stats(); st.RolledBack == 0 {
				t.Errorf("RolledBack = 0")
			}
		})
	}
}

// ConnMaxAge 0 gives the connection back at every boundary; a positive
// age keeps it pinned across boundaries until it is older than that.
func TestConnMaxAge(t *testing.T) {
	t.Parallel()
	t.Run("zero", func(t *testing.T) {
		t.Parallel()
		p, _ := newPool(t, nil)
		ctx := scopeCtx(t, p)
		for range 3 {
			if err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				_, err := backendPID(ctx, s)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Pinned != 0 || st.InUse != 0 {
				t.Fatalf("connection kept past the boundary: %+v", st)
			}
		}
		if st := p.Stats(); st.GivenBack != 3 {
			t.Errorf("given back %d, want 3", st.GivenBack)
		}
	})
	t.Run("positive", func(t *testing.T) {
		t.Parallel()
		p, _ := newPool(t, &dbctx.Options{ConnMaxAge: time.Hour})
		ctx, s := p.Scope(context.Background())
		var first int
		for i := range 3 {
			err := dbctx.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				pid, err := backendPID(ctx, s)
				if i == 0 {
					first = pid
				} else if pid != first {
					t.Errorf("boundary %d moved to backend %d from %d", i, pid, first)
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if st := p.Stats(); st.Pinned != 1 || st.InUse != 1 {
				t.Fatalf("connection not kept: %+v", st)
			}
		}
		s.End()
		if st := p.Stats(); st.Pinned != 0 || st.InUse != 0 || st.GivenBack != 1 {
			t.Fatalf("End did not give the connection back: %+v", st)
		}
	})
	t.Run("expired", func(t *testing.T) {
		t.Parallel()
		p, _ := newPool(t, &dbctx.Options{ConnMaxAge: time.Millisecond})
		ctx, s := p.Scope(context.Background())
		defer s.End()
		if _, err := backendPID(ctx, s); err != nil {
			t.Fatal(err)
		}
		pinned := time.Now()
		eventually(t, "the connection to age", func() bool { return time.Since(pinned) > 2*time.Millisecond })
		if err := dbctx.CloseOld(ctx); err != nil {
			t.Fatal(err)
		}
		if st := p.Stats(); st.Pinned != 0 || st.GivenBack != 1 {
			t.Fatalf("obsolete connection kept: %+v", st)
		}
	})
}

// A connection whose backend died while pinned is discarded at the
// boundary, never given back.
func TestCloseOldDiscardsDead(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "kills server backends and counts what the pool saw; behind a pooler the pooler absorbs the kill")
	p, env := newPool(t, &dbctx.Options{ConnMaxAge: time.Hour})
	ctx, s := p.Scope(context.Background())
	defer s.End()
	if _, err := backendPID(ctx, s); err != nil {
		t.Fatal(err)
	}
	env.Terminate(t)
	if err := dbctx.CloseOld(ctx); err != nil {
		t.Fatal(err)
	}
	// The scope learns of the death at its next statement at the latest:
	// that statement is retried on a fresh connection.
	if _, err := backendPID(ctx, s); err != nil {
		t.Fatalf("after the kill: %v", err)
	}
	if st := p.Stats(); st.Discarded.Total() == 0 {
		t.Errorf("dead connection not discarded: %+v", st)
	}
}

// A result user code left open (a *sql.Row never scanned) does not hang
// the boundary: the connection is discarded, the slot freed, and
// database/sql's bookkeeping ends once the row's context does (goleak in
// TestMain checks that).
func TestRowNeverScanned(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{MaxWorkers: 1})
	ctx, cancel := context.WithCancel(context.Background())
	err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		s.QueryRowContext(ctx, "SELECT g FROM generate_series(1, 100000) g") // never scanned
		// The row was read before QueryRowContext returned: the
		// connection is free for the next statement.
		_, err := queryInt(ctx, s, "SELECT 1")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 || st.Discarded.Total() != 0 || st.GivenBack != 1 {
		t.Fatalf("after the boundary: %+v", st)
	}
	cancel()
	n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
		return queryInt(ctx, s, "SELECT 5")
	})
	if err != nil || n != 5 {
		t.Fatalf("next Do: %d, %v", n, err)
	}
}

// A transaction user code begins on the raw *sql.Conn and never ends does
// not hang the boundary, nor stay open on the server.
func TestRawConnTxLeftOpen(t *testing.T) {
	t.Parallel()
	p, env := newPool(t, &dbctx.Options{MaxWorkers: 1})
	mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
	txCtx, cancel := context.WithCancel(context.Background())
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		c, err := s.Conn(ctx)
		if err != nil {
			return err
		}
		tx, err := c.BeginTx(txCtx, nil)
		if err != nil {
			return err
		}
		_, err = tx.ExecContext(ctx, "INSERT INTO t VALUES (1)")
		return err // tx never ended
	})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.Stats(); st.InUse != 0 || st.Pinned != 0 {
		t.Fatalf("after the boundary: %+v", st)
	}
	// The raw connection was closed at the boundary; its backend ends as
	// soon as it reads that.
	eventually(t, "no connection idle in transaction", func() bool { return env.IdleInTransaction(t) == 0 })
	// database/sql keeps counting the connection open until the
	// transaction's context ends (for a request: when it finishes); with
	// MaxOpenConns 1 the next scope would wait for it.
	cancel()
	n, err := dbctx.DoValue(scopeCtx(t, p), func(ctx context.Context, s *dbctx.Scope) (int, error) {
		return queryInt(ctx, s, "SELECT count(*) FROM t")
	})
	if err != nil || n != 0 {
		t.Fatalf("rows after the boundary: %d, %v; want 0", n, err)
	}
}
