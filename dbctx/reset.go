package dbctx

import (
	"context"
	"strings"
)

// The session reset.
//
// A scope that may have left state in its session (see classify.go) marks
// the session dirty; the reset, Options.ResetSQL and, where code ran that
// may have PREPAREd statements in SQL, their deallocation, is then owed
// before anything else runs on the connection. On a pgx connection it is
// paid by the connection's next user, sent before its first statement in
// the same round trip (prefix.go), or, where the connection goes back to
// the *sql.DB, before it does (keep.go); on another driver, before the
// connection is given back.

// splitStatements splits SQL text into its statements, as the classifier
// reads it.
func splitStatements(query string) []string {
	var out []string
	l := lexer{q: query}
	start, depth := 0, 0
	for {
		t := l.next()
		switch t.kind {
		case tLParen:
			depth++
		case tRParen:
			depth--
		case tSemi, tEOF, tBad:
			if depth <= 0 || t.kind != tSemi {
				end := l.i
				if t.kind == tSemi {
					end--
				}
				if q := strings.TrimSpace(query[start:end]); q != "" {
					out = append(out, q)
				}
				start = l.i
			}
			if t.kind != tSemi {
				return out
			}
		}
	}
}

// resetOther resets the session of a connection of a driver other than
// pgx's, before it is given back: ResetSQL, then the prepared statements'
// sweep where sweep is set.
// It is counted once it has run, and clears what dbscope applied.
func (p *Pool) resetOther(ctx context.Context, c *session, sweep bool) error {
	if _, err := c.pin.conn.ExecContext(ctx, p.opts.ResetSQL); err != nil {
		return err
	}
	if sweep {
		if _, err := c.pin.conn.ExecContext(ctx, sweepSQL); err != nil {
			return err
		}
	}
	p.c.resets.Add(1)
	c.applied = nil
	return nil
}
