package isolation_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sessiontest"
	"github.com/jackc/pgx/v5"
)

var tenant = dbctx.NewSetting("app.tenant")

// Units of work that each run several statements of the corpus, in random
// order and combinations (seeded, so a failure replays), through the
// Scope's database/sql and pgx methods and batches, with failed statements
// between them, some inside Atomic blocks that commit or roll back, some
// with a tenant declared, statements canceled: the next unit of work on the
// connection finds the session as a fresh one has it, in each exec mode. Where the corpus
// test runs each statement alone, this one finds what one statement's
// reset leaves to the next's (the reset owed, the sweep's check, a reset
// rolled back with the statement that shared its transaction).
func TestNoStateCrossesRandomUnits(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the corpus leaves session state, refused behind a pooler")
	for i, mode := range []string{"cache_statement", "exec", "simple_protocol", "cache_describe"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			p, _, se := setupMode(t, mode)
			base, _ := probe(t, p, se)
			r := rand.New(rand.NewPCG(uint64(i), 7))
			for n := range 150 {
				u := &randomUnit{r: r, se: se}
				ctx := context.Background()
				if r.IntN(2) == 0 {
					ctx = tenant.With(ctx, fmt.Sprint("t", r.IntN(3)))
				}
				p.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
					for range 1 + r.IntN(4) {
						u.step(ctx, s, true)
					}
					return nil
				})
				if after, _ := probe(t, p, se); after != base {
					t.Fatalf("unit %d: the next scope sees: %s\nthe unit ran:\n%s", n, sessiontest.Diff(base, after), strings.Join(u.steps, "\n"))
				}
			}
		})
	}
}

// randomUnit runs random steps in one unit of work.
type randomUnit struct {
	r     *rand.Rand
	se    *sessiontest.Env
	steps []string
}

func (u *randomUnit) step(ctx context.Context, s *dbctx.Scope, atomic bool) {
	switch k := u.r.IntN(10); {
	case k < 6:
		u.run(ctx, s, u.se.Statement(sessiontest.Cases[u.r.IntN(len(sessiontest.Cases))]))
	case k < 7:
		u.run(ctx, s, "SELECT 1 / 0")
	case k < 8:
		// Canceled midway (or before it is sent): the connection may go.
		ctx, cancel := context.WithTimeout(ctx, time.Duration(u.r.IntN(3))*time.Millisecond)
		u.run(ctx, s, "SELECT pg_sleep(0.05)")
		cancel()
	case atomic:
		rollback := u.r.IntN(2) == 0
		u.steps = append(u.steps, fmt.Sprintf("Atomic (roll back: %v) {", rollback))
		dbctx.Atomic(ctx, func(ctx context.Context) error {
			for range 1 + u.r.IntN(3) {
				u.step(ctx, s, false)
			}
			if rollback {
				return errors.New("roll back")
			}
			return nil
		})
		u.steps = append(u.steps, "}")
	default:
		u.run(ctx, s, "SELECT 1")
	}
}

// run runs q through one of the scope's ways; its error is the
// statement's business.
func (u *randomUnit) run(ctx context.Context, s *dbctx.Scope, q string) {
	ways := 2
	if !strings.Contains(strings.TrimRight(strings.TrimSpace(q), ";"), ";") {
		ways = 5 // one statement: the extended protocol's ways too
	}
	way := u.r.IntN(ways)
	var err error
	switch way {
	case 0:
		_, err = s.ExecContext(ctx, q)
	case 1:
		_, err = s.Exec(ctx, q)
	case 2:
		var rows interface{ Close() error }
		if rows, err = s.QueryContext(ctx, q); err == nil {
			err = rows.Close()
		}
	case 3:
		var rows pgx.Rows
		if rows, err = s.Query(ctx, q); err == nil {
			rows.Close()
			err = rows.Err()
		}
	case 4:
		b := &pgx.Batch{}
		b.Queue(q)
		err = s.SendBatch(ctx, b).Close()
	}
	u.steps = append(u.steps, fmt.Sprintf("  way %d: %q -> %v", way, q, err))
}
