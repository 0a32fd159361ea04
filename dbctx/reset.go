package dbctx

import (
	"context"
	"strings"

	"github.com/jackc/pgx/v5/stdlib"
)

// sweepSQL ends every reset: it lists the statements PREPAREd in SQL,
// however they were made (PREPARE in a string of several, in a function,
// in a DO block), to be deallocated by name. pgx's own statements, made
// through the protocol, are not from_sql and stay cached.
const sweepSQL = "SELECT name FROM pg_prepared_statements WHERE from_sql"

// reset runs the pool's ResetSQL and the sweep of prepared statements in
// one round trip, then deallocates what the sweep found (a second round
// trip, only then) and, under pgx, drops notifications that arrived for
// channels the scope listened on and that nobody read.
func (s *Scope) reset(ctx context.Context) error {
	if s.pg == nil {
		return s.resetSQL(ctx)
	}
	return s.conn.Raw(func(dc any) error {
		pc := dc.(*stdlib.Conn).Conn()
		res, err := pc.PgConn().Exec(ctx, s.pool.opts.ResetSQL+";\n"+sweepSQL).ReadAll()
		if err != nil {
			return err
		}
		var names []string
		for _, row := range res[len(res)-1].Rows {
			names = append(names, string(row[0]))
		}
		if len(names) > 0 {
			if _, err := pc.PgConn().Exec(ctx, deallocateSQL(names)).ReadAll(); err != nil {
				return err
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
	if _, err := s.conn.ExecContext(ctx, s.pool.opts.ResetSQL); err != nil {
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
