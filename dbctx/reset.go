package dbctx

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
)

// sweepSQL follows the reset of a scope that ran code which may have
// PREPAREd statements in SQL (see kindCode), however it did (PREPARE in a
// string of several, in a function, in a DO block): it lists them, to be
// deallocated by name. pgx's own statements, made through the protocol,
// are not from_sql and stay cached. It is not free: the server lists every
// prepared statement of the session, pgx's included, about as dear as a
// trivial query.
const sweepSQL = "SELECT name FROM pg_prepared_statements WHERE from_sql"

// reset runs the pool's ResetSQL and, where needed, the sweep of prepared
// statements, in one round trip, then deallocates what the sweep found (a
// second round trip, only then) and, under pgx, drops notifications that
// arrived for channels the scope listened on and that nobody read.
func (s *Scope) reset(ctx context.Context) error {
	if s.pg == nil {
		return s.resetSQL(ctx)
	}
	return s.conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		sql := s.pool.opts.ResetSQL
		if s.sweep {
			sql += ";\n" + sweepSQL
		}
		res, err := pc.PgConn().Exec(ctx, sql).ReadAll()
		if err != nil {
			return err
		}
		if s.sweep {
			var names []string
			for _, row := range res[len(res)-1].Rows {
				names = append(names, string(row[0]))
			}
			if len(names) > 0 {
				if _, err := pc.PgConn().Exec(ctx, deallocateSQL(names)).ReadAll(); err != nil {
					return err
				}
			}
		}
		done, cancel := context.WithCancel(context.Background())
		cancel()
		for {
			if _, err := pc.WaitForNotification(done); err != nil {
				return nil
			}
		}
	})
}

// resetSQL is reset through database/sql, for drivers other than pgx.
func (s *Scope) resetSQL(ctx context.Context) error {
	if _, err := s.conn.ExecContext(ctx, s.pool.opts.ResetSQL); err != nil || !s.sweep {
		return err
	}
	rows, err := s.conn.QueryContext(ctx, sweepSQL)
	if err != nil {
		return err
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			rows.Close()
			return err
		}
		names = append(names, n)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if len(names) > 0 {
		_, err = s.conn.ExecContext(ctx, deallocateSQL(names))
	}
	return err
}

// deallocateSQL deallocates the prepared statements names.
func deallocateSQL(names []string) string {
	var b strings.Builder
	for _, n := range names {
		b.WriteString(`DEALLOCATE "`)
		b.WriteString(strings.ReplaceAll(n, `"`, `""`))
		b.WriteString(`";`)
	}
	return b.String()
}
