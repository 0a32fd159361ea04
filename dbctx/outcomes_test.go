package dbctx_test

import (
	"context"
	"database/sql"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// What Atomic says is what PostgreSQL committed: random programs (seeded)
// of inserts (database/sql, pgx, a batch), failing statements, nested
// Atomic calls that commit or roll back, rows and batch results left open
// across statements and past the end of an Atomic, and backends killed
// between statements (on a direct connection), in four exec modes. A row
// counts as committed where the insert, every Atomic around it, and the
// outermost one returned nil (an insert outside Atomic where it returned
// nil); PostgreSQL's table must hold exactly those rows. (An Atomic that
// ended with rows open reported success while its work was lost; a nested
// one that failed that way committed its work with the outer one, which
// reported success.)
func TestAtomicOutcomesMatchCommits(t *testing.T) {
	t.Parallel()
	eachExecMode(t, func(t *testing.T, mode string, i int) {
		env := newEnv(t)
		mustExec(t, env.Admin(), "CREATE TABLE "+env.Schema()+".t (id int PRIMARY KEY)")
		mustExec(t, env.Admin(), "GRANT ALL ON "+env.Schema()+".t TO "+env.Role())
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet(), TransactionPooling: pgtest.Pooled()})
		g := &outcomes{r: rand.New(rand.NewPCG(uint64(i), 11))}
		if !pgtest.Pooled() {
			g.kill = func() { env.Terminate(t) }
		}
		for n := range 150 {
			g.steps = g.steps[:0]
			p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				g.s = s
				for range 1 + g.r.IntN(3) {
					g.top(ctx)
				}
				g.closeAll()
				return nil
			})
			var got []int
			rows, err := env.Admin().Query("SELECT id FROM " + env.Schema() + ".t ORDER BY id")
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var id int
				rows.Scan(&id)
				got = append(got, id)
			}
			rows.Close()
			slices.Sort(g.committed)
			if !slices.Equal(got, g.committed) {
				t.Fatalf("program %d: PostgreSQL holds %v, the calls' results say %v; the program:\n%s", n, got, g.committed, g.trace())
			}
		}
		if st := p.Stats(); g.kills > 0 && st.Discarded.Dead+st.Discarded.Broken == 0 {
			t.Errorf("%d kills, and no dead connection seen: %+v", g.kills, st)
		}
		t.Logf("%d kills; %+v", g.kills, p.Stats().Discarded)
	})
}

type outcomes struct {
	r         *rand.Rand
	s         *dbctx.Scope
	next      int
	committed []int
	open      []func() // closes results left open
	kill      func()   // terminates the pool's backends, and waits until they are gone
	kills     int
	stepLog
}

func (g *outcomes) closeAll() {
	for _, close := range g.open {
		close()
	}
	g.open = g.open[:0]
}

// top is one step outside a transaction.
func (g *outcomes) top(ctx context.Context) {
	if g.maybeKill() {
		return
	}
	if g.r.IntN(3) == 0 {
		if id, err := g.insert(ctx); err == nil {
			g.committed = append(g.committed, id)
		}
		return
	}
	var kept []int
	g.log("Atomic {")
	err := dbctx.Atomic(ctx, func(ctx context.Context) error {
		var err error
		kept, err = g.frame(ctx)
		return err
	})
	g.log("} -> %v", err)
	if err == nil {
		g.committed = append(g.committed, kept...)
	}
	g.closeAll()
}

func (g *outcomes) insert(ctx context.Context) (int, error) {
	g.next++
	id := g.next
	var err error
	way := g.r.IntN(3)
	switch way {
	case 0:
		_, err = g.s.ExecContext(ctx, "INSERT INTO t VALUES ($1)", id)
	case 1:
		_, err = g.s.Exec(ctx, "INSERT INTO t VALUES ($1)", id)
	case 2:
		b := &pgx.Batch{}
		b.Queue("INSERT INTO t VALUES ($1)", id)
		err = g.s.SendBatch(ctx, b).Close()
	}
	g.log("insert %d (way %d) -> %v", id, way, err)
	return id, err
}

// maybeKill kills the backend, now and then, while the scope is idle.
func (g *outcomes) maybeKill() bool {
	if g.kill == nil || g.r.IntN(12) > 0 {
		return false
	}
	g.kill()
	g.kills++
	g.log("backend killed")
	return true
}

// frame runs steps in a transaction or savepoint: the ids it inserted and
// kept, and what ends it (nil to commit).
func (g *outcomes) frame(ctx context.Context) (kept []int, err error) {
	g.depth++
	defer func() { g.depth-- }()
	for range g.r.IntN(6) {
		if g.maybeKill() {
			continue
		}
		switch k := g.r.IntN(12); {
		case k < 5:
			id, err := g.insert(ctx)
			if err != nil {
				return kept, err
			}
			kept = append(kept, id)
		case k < 6:
			_, err := g.s.ExecContext(ctx, "SELECT 1 / 0")
			g.log("SELECT 1 / 0 -> %v", err)
			return kept, err
		case k < 8 && g.depth < 4:
			var inner []int
			rollback := g.r.IntN(3) == 0
			g.log("Atomic (roll back: %v) {", rollback)
			err := dbctx.Atomic(ctx, func(ctx context.Context) error {
				var err error
				inner, err = g.frame(ctx)
				if err == nil && rollback {
					return errRollBack
				}
				return err
			})
			g.log("} -> %v", err)
			if err == nil {
				kept = append(kept, inner...)
			}
			if g.r.IntN(2) == 0 {
				g.closeAll()
			}
		case k < 10:
			const q = "SELECT generate_series(1, 2)"
			var close func()
			var err error
			way := g.r.IntN(3)
			switch way {
			case 0:
				var rows *sql.Rows
				if rows, err = g.s.QueryContext(ctx, q); err == nil {
					close = func() { rows.Close() }
				}
			case 1:
				var rows pgx.Rows
				if rows, err = g.s.Query(ctx, q); err == nil {
					close = rows.Close
				}
			case 2:
				b := &pgx.Batch{}
				b.Queue(q)
				br := g.s.SendBatch(ctx, b)
				close = func() { br.Close() }
			}
			g.log("rows opened (way %d) -> %v", way, err)
			if close != nil {
				g.open = append(g.open, close)
			}
		default:
			g.log("rows closed")
			g.closeAll()
		}
	}
	if g.r.IntN(4) == 0 {
		return kept, errRollBack
	}
	return kept, nil
}
