package dbctx_test

import (
	"context"
	"errors"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// Whatever an earlier scope left on the connection, the next scope's first
// use of it, through any of the Scope's ways in, in every exec mode,
// succeeds after the reset and sees none of it: PostgreSQL is asked, by
// that first use where it can run a query, else by the statement after
// it. (A batch after a PREPARE failed here with the sweep check's error.)
func TestFirstUseAfterDirtyScope(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "resets a session")
	leaves := map[string]string{
		"setting":  "SET statement_timeout = '5s'",
		"code":     "CREATE TEMP TABLE scratch (n int)",
		"prepare":  "PREPARE dbscope_p AS SELECT 1",
		"listen":   "LISTEN dbscope_test",
		"lock":     "SELECT pg_advisory_lock(42)",
		"write":    "INSERT INTO t (n) VALUES (1)",
		"function": "SELECT setseed(0.5) FROM t WHERE false", // closes the connection instead
	}
	// Each use returns what held (see firstUse) returned, run by the use
	// itself or after it.
	after := func(ctx context.Context, s *dbctx.Scope, held string, err error) (int, error) {
		if err != nil {
			return 0, err
		}
		return queryInt(ctx, s, held)
	}
	uses := map[string]use{
		"ExecContext": func(ctx context.Context, s *dbctx.Scope, held string) (int, error) {
			_, err := s.ExecContext(ctx, "SELECT 1")
			return after(ctx, s, held, err)
		},
		"QueryRowContext": func(ctx context.Context, s *dbctx.Scope, held string) (int, error) {
			return queryInt(ctx, s, held)
		},
		"QueryContext": func(ctx context.Context, s *dbctx.Scope, held string) (int, error) {
			rows, err := s.QueryContext(ctx, held)
			if err != nil {
				return 0, err
			}
			defer rows.Close()
			return scanInts(rows)
		},
		"PrepareContext": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			st, err := s.PrepareContext(ctx, held)
			if err != nil {
				return 0, err
			}
			defer st.Close()
			err = st.QueryRowContext(ctx).Scan(&n)
			return n, err
		},
		"BeginTx": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				return 0, err
			}
			defer tx.Rollback()
			err = tx.QueryRowContext(ctx, held).Scan(&n)
			return n, errors.Join(err, tx.Commit())
		},
		"Atomic": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			err = dbctx.Atomic(ctx, func(ctx context.Context) (err error) {
				n, err = queryInt(ctx, s, held)
				return err
			})
			return n, err
		},
		"Conn": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			c, err := s.Conn(ctx)
			if err != nil {
				return 0, err
			}
			err = c.QueryRowContext(ctx, held).Scan(&n)
			return n, err
		},
		"Exec": func(ctx context.Context, s *dbctx.Scope, held string) (int, error) {
			_, err := s.Exec(ctx, "SELECT 1")
			return after(ctx, s, held, err)
		},
		"QueryRow": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			err = s.QueryRow(ctx, held).Scan(&n)
			return n, err
		},
		"Query": func(ctx context.Context, s *dbctx.Scope, held string) (int, error) {
			rows, err := s.Query(ctx, held)
			if err != nil {
				return 0, err
			}
			defer rows.Close()
			return scanInts(rows)
		},
		"SendBatch": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			b := &pgx.Batch{}
			b.Queue(held).QueryRow(func(row pgx.Row) error { return row.Scan(&n) })
			return n, s.SendBatch(ctx, b).Close()
		},
		"CopyFrom": func(ctx context.Context, s *dbctx.Scope, held string) (int, error) {
			_, err := s.CopyFrom(ctx, pgx.Identifier{"t"}, []string{"n"}, pgx.CopyFromRows([][]any{{2}}))
			return after(ctx, s, held, err)
		},
		"Pgx": func(ctx context.Context, s *dbctx.Scope, held string) (n int, err error) {
			err = s.Pgx(ctx, func(c *pgx.Conn) error {
				return c.QueryRow(ctx, held).Scan(&n)
			})
			return n, err
		},
	}
	for _, mode := range []string{"cache_statement", "exec", "cache_describe", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (id serial PRIMARY KEY, n int)")
			mustExec(t, env.Admin(), "GRANT ALL ON ALL TABLES IN SCHEMA "+env.Schema()+" TO "+env.Role())
			mustExec(t, env.Admin(), "GRANT ALL ON ALL SEQUENCES IN SCHEMA "+env.Schema()+" TO "+env.Role())
			// One pool, one connection at a time: each first use pays the
			// reset of what the leave before it left.
			p := countedPool(t, env, newProxy(t, env), mode)
			for leaveName, leave := range leaves {
				for useName, u := range uses {
					for _, tn := range []string{"", "t7"} {
						t.Run(leaveName+"/"+useName+"/"+tn, func(t *testing.T) {
							firstUse(t, p, leave, u, tn)
						})
					}
				}
			}
		})
	}
}

// use is a first use of a scope: it returns what held returned.
type use func(ctx context.Context, s *dbctx.Scope, held string) (int, error)

// firstUse runs leave in a scope of tenant t1, then u as the first use of
// the next scope, of tenant tn (none if ""), on the same connection. The
// query u runs counts the kinds of state the session holds of the earlier
// scope, plus one if the statement sees a tenant other than tn (the reset
// leaves app.tenant defined and empty, where a fresh session has none).
func firstUse(t *testing.T, p *dbctx.Pool, leave string, u use, tn string) {
	ctx := context.Background()
	if err := p.Do(tenant.With(ctx, "t1"), func(ctx context.Context, s *dbctx.Scope) error {
		_, err := s.ExecContext(ctx, leave)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	want := "-"
	if tn != "" {
		ctx, want = tenant.With(ctx, tn), tn
	}
	held := `SELECT (current_setting('statement_timeout') <> '0')::int
		+ (coalesce(nullif(current_setting('app.tenant', true), ''), '-') <> '` + want + `')::int
		+ (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema())::int
		+ (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::int
		+ (SELECT count(*) FROM pg_listening_channels())::int
		+ (SELECT count(*) FROM pg_prepared_statements WHERE from_sql)::int`
	var left int
	if err := p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) (err error) {
		left, err = u(ctx, s, held)
		return err
	}); err != nil {
		t.Fatalf("the first use after %q: %v", leave, err)
	}
	if left != 0 {
		t.Errorf("the first use after %q found %d kinds of the earlier scope's state, or another tenant", leave, left)
	}
}

// scanInts reads rows of one int column (database/sql's or pgx's) to the
// end: the last row's value, and the first error.
func scanInts(rows interface {
	Next() bool
	Scan(...any) error
	Err() error
}) (n int, err error) {
	for rows.Next() {
		if e := rows.Scan(&n); err == nil {
			err = e
		}
	}
	return n, errors.Join(err, rows.Err())
}
