package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// What a scope hands out (the *sql.Conn of Conn, the *sql.Tx of BeginTx,
// the *pgx.Conn of Pgx, of pgx rows and of a batch's transaction) fails
// once the scope is done with it, and runs nothing: PostgreSQL holds no
// row of what was tried afterwards, and the next scope, on the one
// connection of the pool, sees nothing of it.
func TestHandedOutDieWithTheScope(t *testing.T) {
	t.Parallel()
	type kept struct {
		use func(ctx context.Context) error // runs an INSERT of 1 through what was kept
	}
	grab := map[string]func(ctx context.Context, s *dbctx.Scope) (kept, error){
		"Conn": func(ctx context.Context, s *dbctx.Scope) (kept, error) {
			c, err := s.Conn(ctx)
			return kept{func(ctx context.Context) error {
				_, err := c.ExecContext(ctx, "INSERT INTO t VALUES (1)")
				return err
			}}, err
		},
		"BeginTx": func(ctx context.Context, s *dbctx.Scope) (kept, error) {
			tx, err := s.BeginTx(ctx, nil)
			return kept{func(ctx context.Context) error {
				if _, err := tx.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
					return err
				}
				return tx.Commit()
			}}, err
		},
		"Pgx": func(ctx context.Context, s *dbctx.Scope) (kept, error) {
			var pc *pgx.Conn
			err := s.Pgx(ctx, func(c *pgx.Conn) error { pc = c; return nil })
			return kept{func(ctx context.Context) error {
				_, err := pc.Exec(ctx, "INSERT INTO t VALUES (1)")
				return err
			}}, err
		},
		"rows.Conn (pgx)": func(ctx context.Context, s *dbctx.Scope) (kept, error) {
			rows, err := s.Query(ctx, "SELECT 1")
			if err != nil {
				return kept{}, err
			}
			pc := rows.Conn()
			rows.Close()
			return kept{func(ctx context.Context) error {
				_, err := pc.Exec(ctx, "INSERT INTO t VALUES (1)")
				return err
			}}, nil
		},
		"batch Tx (pgx)": func(ctx context.Context, s *dbctx.Scope) (kept, error) {
			b := &pgx.Batch{}
			b.BeginTx(pgx.TxOptions{})
			b.Queue("SELECT 1")
			br := s.SendBatch(ctx, b)
			tx := br.Tx()
			if err := br.Close(); err != nil {
				return kept{}, err
			}
			return kept{func(ctx context.Context) error {
				if _, err := tx.Exec(ctx, "INSERT INTO t VALUES (1)"); err != nil {
					return err
				}
				return tx.Commit(ctx)
			}}, nil
		},
	}
	for name, g := range grab {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (n int)")
			p := onePool(t, env, dbctx.Options{Logger: quiet()})
			var k kept
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				var err error
				k, err = g(ctx, s)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			// The next scope takes the pool's one connection.
			next, scope := p.Scope(context.Background())
			defer scope.End()
			if _, err := queryInt(next, scope, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			err := k.use(context.Background())
			if err == nil {
				t.Fatalf("%s used after its scope's boundary: no error", name)
			}
			var n int
			if err := env.Admin().QueryRow("SELECT count(*) FROM " + env.Schema() + ".t").Scan(&n); err != nil || n != 0 {
				t.Fatalf("%s used after its scope's boundary ran its statement: %d rows (%v)", name, n, err)
			}
			if st := p.Stats(); st.Discarded.Raw != 1 && name != "BeginTx" {
				t.Errorf("discarded for raw access: %d, want 1", st.Discarded.Raw)
			}
			if name == "BeginTx" && !errors.Is(err, sql.ErrTxDone) {
				t.Errorf("the *sql.Tx after the boundary: %v, want sql.ErrTxDone", err)
			}
		})
	}
}

// A dirty scope costs no round trip of its own: the reset it owes goes out
// with the next scope's first statement, which takes one round trip as
// after a clean scope; and the next scope sees nothing of the dirty one.
func TestResetCostsNoRoundTrip(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "counts the round trips to the server")
	for _, mode := range []string{"cache_statement", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (id serial PRIMARY KEY, n int)")
			px := newProxy(t, env)
			p := countedPool(t, env, px, mode)
			insert := func() {
				if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					_, err := s.ExecContext(ctx, "INSERT INTO t (n) VALUES ($1)", 1)
					return err
				}); err != nil {
					t.Fatal(err)
				}
			}
			lookup := func() (last any) {
				if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
					return s.QueryRowContext(ctx, "SELECT current_setting('app.x', true)").Scan(&last)
				}); err != nil {
					t.Fatal(err)
				}
				return last
			}
			insert()
			lookup()
			before, resets := px.Trips(), p.Stats().Resets
			for range 10 {
				insert() // dirty: sequence state, triggers
				lookup()
			}
			if n := px.Trips() - before; n != 20 {
				t.Errorf("10 inserts and 10 lookups after them took %d round trips, want 20", n)
			}
			if n := p.Stats().Resets - resets; n != 10 {
				t.Errorf("%d resets, want one after each insert", n)
			}
			// And the reset does its job: a setting of the dirty scope
			// does not reach the next.
			if err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SET app.x = 'dirty'")
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if v := lookup(); v != nil && v != "" {
				t.Errorf("the next scope sees app.x = %v", v)
			}
		})
	}
}
