package dbctx_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

var actor = dbctx.NewSetting("app.actor")

// Inside transactions, nested Atomic calls, savepoints of the caller's
// own, failed statements and rollbacks, each statement sees exactly the
// settings its context declares: random programs of them (seeded, so a
// failure replays), through the Scope's database/sql and pgx methods, pgx
// batches and a BeginTx transaction's (whose statements see BeginTx's), in
// each exec mode, with PostgreSQL reading back what the statement saw. A rollback to a savepoint puts back the values
// the transaction had before it, which the settings' bookkeeping must not
// take for those it applied since (a nested Atomic that set another tenant
// and rolled back left the next statement of that tenant reading the
// outer one's).
func TestSettingsInTransactions(t *testing.T) {
	t.Parallel()
	eachExecMode(t, func(t *testing.T, mode string, i int) {
		env := newEnv(t)
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet(), TransactionPooling: pgtest.Pooled()})
		for n := range 1500 {
			g := &txProgram{t: t, r: rand.New(rand.NewPCG(uint64(i), uint64(n)))}
			err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
				g.s, g.root = s, ctx
				for range 1 + g.r.IntN(4) {
					g.top()
				}
				return nil
			})
			if err != nil {
				t.Errorf("program %d: %v\n%s", n, err, g.trace())
			}
			if t.Failed() {
				t.Fatalf("program %d (seed %d, %d):\n%s", n, i, n, g.trace())
			}
		}
	})
}

// txProgram runs one random program on a scope and checks what each of
// its statements sees.
type txProgram struct {
	t    *testing.T
	r    *rand.Rand
	s    *dbctx.Scope
	root context.Context // the scope's, declaring nothing
	stepLog
	// tainted says the unit's own SQL set the setting (tenant, actor):
	// a statement that does not declare it may see that value.
	tainted [2]bool
	sp      int // savepoints of the program's own, for names
	reads   int
}

var (
	errRollBack = errors.New("roll back")
	errFailed   = errors.New("a statement failed: the transaction is aborted")
)

// stepLog is what a random program ran, indented by its depth in
// transactions, for the message of a failure.
type stepLog struct {
	steps []string
	depth int
}

func (l *stepLog) log(format string, args ...any) {
	l.steps = append(l.steps, strings.Repeat("  ", l.depth)+fmt.Sprintf(format, args...))
}

func (l *stepLog) trace() string { return strings.Join(l.steps, "\n") }

// declared returns a context of the scope that declares a random tenant
// and actor (or not), and what a statement run with it must see.
func (g *txProgram) declared() (context.Context, [2]string) {
	ctx, want := g.root, [2]string{}
	if v := []string{"", "A", "B", "C"}[g.r.IntN(4)]; v != "" {
		ctx, want[0] = tenant.With(ctx, v), v
	}
	if v := []string{"", "x", "y"}[g.r.IntN(3)]; v != "" {
		ctx, want[1] = actor.With(ctx, v), v
	}
	return ctx, want
}

// runner is where a program's statements go: the scope, or a BeginTx
// transaction.
type runner interface {
	row(ctx context.Context, q string) interface{ Scan(...any) error }
	exec(ctx context.Context, q string) error
}

// scopeRunner runs through the scope: its database/sql methods (way 0),
// its pgx methods (1), or a pgx batch (2).
type scopeRunner struct {
	s   *dbctx.Scope
	way int
}

func (r scopeRunner) row(ctx context.Context, q string) interface{ Scan(...any) error } {
	switch r.way {
	case 1:
		return r.s.QueryRow(ctx, q)
	case 2:
		return batchRow{r.s, ctx, q}
	}
	return r.s.QueryRowContext(ctx, q)
}

func (r scopeRunner) exec(ctx context.Context, q string) error {
	switch r.way {
	case 1:
		_, err := r.s.Exec(ctx, q)
		return err
	case 2:
		b := &pgx.Batch{}
		b.Queue(q)
		return r.s.SendBatch(ctx, b).Close()
	}
	_, err := r.s.ExecContext(ctx, q)
	return err
}

// batchRow is a row read by a batch of one query.
type batchRow struct {
	s   *dbctx.Scope
	ctx context.Context
	q   string
}

func (r batchRow) Scan(dest ...any) error {
	b := &pgx.Batch{}
	b.Queue(r.q).QueryRow(func(row pgx.Row) error { return row.Scan(dest...) })
	return r.s.SendBatch(r.ctx, b).Close()
}

// txRunner runs on a *sql.Tx, whose statements the scope does not see:
// they all see the settings of BeginTx's context (want).
type txRunner struct {
	tx   *sql.Tx
	want [2]string
}

func (r txRunner) row(ctx context.Context, q string) interface{ Scan(...any) error } {
	return r.tx.QueryRowContext(ctx, q)
}

func (r txRunner) exec(ctx context.Context, q string) error {
	_, err := r.tx.ExecContext(ctx, q)
	return err
}

func (g *txProgram) scopeRunner() runner { return scopeRunner{g.s, g.r.IntN(3)} }

// read runs a statement that reads back the settings it sees.
func (g *txProgram) read(r runner) {
	ctx, want := g.declared()
	if tr, ok := r.(txRunner); ok {
		want = tr.want
	}
	var got [2]string
	err := r.row(ctx, "SELECT coalesce(current_setting('app.tenant', true), ''), coalesce(current_setting('app.actor', true), '')").Scan(&got[0], &got[1])
	g.reads++
	g.log("read %q (%T) -> %q %v", want, r, got, err)
	for i := range got {
		if g.tainted[i] && want[i] == "" {
			got[i] = "" // undeclared, and set by the unit's own SQL
		}
	}
	switch {
	case err != nil:
		g.t.Errorf("read %d: %v", g.reads, err)
	case got != want:
		g.t.Errorf("read %d: the statement saw tenant %q, actor %q; its context declares %q, %q", g.reads, got[0], got[1], want[0], want[1])
	}
}

// ownSQL runs, through the scope, a statement of the unit's own that sets
// or resets the settings: dbscope must apply the declared ones again.
func (g *txProgram) ownSQL(r runner) {
	stmts := []struct {
		q     string
		taint int // -1: none
	}{
		// Transaction-local first: behind a pooler the others are refused.
		{"SELECT set_config('app.actor', 'Z', true)", 1},
		{"SET LOCAL app.actor = 'Z'", 1},
		{"SELECT set_config('app.tenant', 'Z', false)", 0},
		{"SET app.tenant = 'Z'", 0},
		{"RESET ALL", -1},
		{"SET app.tenant TO DEFAULT", -1},
	}
	if pgtest.Pooled() {
		stmts = stmts[:2]
	}
	st := stmts[g.r.IntN(len(stmts))]
	ctx, want := g.declared()
	err := r.exec(ctx, st.q)
	g.log("%s %q -> %v", st.q, want, err)
	if err != nil {
		g.t.Errorf("%s: %v", st.q, err)
	}
	if st.taint >= 0 {
		g.tainted[st.taint] = true
	}
}

// top is one step of the program outside a transaction.
func (g *txProgram) top() {
	switch g.r.IntN(6) {
	case 5:
		g.ownSQL(g.scopeRunner())
	case 0:
		g.read(g.scopeRunner())
	case 1:
		// Its implicit transaction rolls back, with what was set in it.
		ctx, want := g.declared()
		err := g.scopeRunner().exec(ctx, "SELECT 1 / 0")
		g.log("SELECT 1 / 0 %q -> %v", want, err)
		if err == nil {
			g.t.Errorf("SELECT 1 / 0 did not fail")
		}
	case 2, 3:
		ctx, want := g.declared()
		g.log("Atomic %q {", want)
		err := dbctx.Atomic(ctx, func(context.Context) error { return g.body(g.scopeRunner, true) })
		g.log("} -> %v", err)
		g.wantEnd(err)
	default:
		ctx, want := g.declared()
		tx, err := g.s.BeginTx(ctx, nil)
		if err != nil {
			g.t.Errorf("BeginTx: %v", err)
			return
		}
		g.log("BeginTx %q {", want)
		r := txRunner{tx, want}
		err = g.body(func() runner { return r }, false)
		if err == nil && g.r.IntN(3) > 0 {
			err = tx.Commit()
			g.log("} Commit -> %v", err)
			if err != nil {
				g.t.Errorf("Commit: %v", err)
			}
			return
		}
		err = tx.Rollback()
		g.log("} Rollback -> %v", err)
		if err != nil {
			g.t.Errorf("Rollback: %v", err)
		}
	}
}

// wantEnd checks how an Atomic the program ran ended: nil, or the error
// its body returned.
func (g *txProgram) wantEnd(err error) {
	if err != nil && !errors.Is(err, errRollBack) && !errors.Is(err, errFailed) {
		g.t.Errorf("Atomic: %v", err)
	}
}

// body runs steps inside a transaction (or savepoint) and returns what
// ends it: nil to commit (release), errRollBack or errFailed to roll back.
// atomic says Atomic may nest here.
func (g *txProgram) body(run func() runner, atomic bool) error {
	g.depth++
	defer func() { g.depth-- }()
	for range g.r.IntN(5) {
		switch k := g.r.IntN(11); {
		case k == 10:
			if r, ok := run().(scopeRunner); ok {
				g.ownSQL(r)
			}
		case k < 5:
			g.read(run())
		case k < 7 && atomic && g.depth < 4:
			ctx, want := g.declared()
			g.log("Atomic %q {", want)
			err := dbctx.Atomic(ctx, func(context.Context) error { return g.body(run, true) })
			g.log("} -> %v", err)
			g.wantEnd(err)
		case k < 9 && g.depth < 4:
			if err := g.savepoint(run); err != nil {
				return err
			}
		default:
			ctx, want := g.declared()
			err := run().exec(ctx, "SELECT 1 / 0")
			g.log("SELECT 1 / 0 %q -> %v", want, err)
			if err == nil {
				g.t.Errorf("SELECT 1 / 0 did not fail")
			}
			return errFailed
		}
	}
	if g.r.IntN(4) == 0 {
		return errRollBack
	}
	return nil
}

// savepoint runs steps in a savepoint of the program's own, in SQL, and
// releases it or rolls back to it: a failure inside is rolled back to it
// (so the transaction goes on).
func (g *txProgram) savepoint(run func() runner) error {
	g.sp++
	name := fmt.Sprintf("own_%d", g.sp)
	ctx, want := g.declared()
	if err := run().exec(ctx, "SAVEPOINT "+name); err != nil {
		g.t.Errorf("SAVEPOINT: %v", err)
		return errFailed
	}
	g.log("SAVEPOINT %s %q {", name, want)
	err := g.body(run, false)
	end := "RELEASE SAVEPOINT "
	if err != nil {
		end = "ROLLBACK TO SAVEPOINT "
	}
	ctx, want = g.declared()
	eerr := run().exec(ctx, end+name)
	g.log("} %s%q -> %v", end, want, eerr)
	if eerr != nil {
		g.t.Errorf("%s: %v", end, eerr)
		return errFailed
	}
	return nil
}

// A batch, or a string of several statements, that ends its transaction
// or rolls back to a savepoint before another of its statements is
// refused, before anything is sent, where settings are in play: the
// statements after that one would run without the settings of their
// context (with those the savepoint had, or the session's). Where none
// are, it runs.
func TestSettingsEndBeforeStatement(t *testing.T) {
	t.Parallel()
	p, _ := newPool(t, &dbctx.Options{Logger: quiet(), TransactionPooling: pgtest.Pooled()})
	readSQL := "SELECT coalesce(current_setting('app.tenant', true), '')"
	batch := func(ctx context.Context, s *dbctx.Scope, qs ...string) (string, error) {
		b := &pgx.Batch{}
		var got string
		for _, q := range qs {
			if q == readSQL {
				b.Queue(q).QueryRow(func(row pgx.Row) error { return row.Scan(&got) })
			} else {
				b.Queue(q)
			}
		}
		return got, s.SendBatch(ctx, b).Close()
	}
	read := func(ctx context.Context, s *dbctx.Scope) (v string, err error) {
		err = s.QueryRowContext(ctx, readSQL).Scan(&v)
		return v, err
	}
	a := tenant.With(context.Background(), "A")
	err := p.Do(a, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SAVEPOINT sp"); err != nil {
				return err
			}
			b := tenant.With(ctx, "B")
			for name, run := range map[string]func() (string, error){
				"batch": func() (string, error) { return batch(b, s, "ROLLBACK TO SAVEPOINT sp", readSQL) },
				"string": func() (string, error) {
					_, err := s.ExecContext(b, "ROLLBACK TO SAVEPOINT sp; SELECT 1")
					return "", err
				},
				"commit in a batch": func() (string, error) { return batch(b, s, "SELECT 1", "COMMIT", readSQL) },
			} {
				// (The COMMIT is transaction control inside Atomic.)
				if got, err := run(); err == nil || !strings.Contains(err.Error(), "cannot carry the settings") && !errors.Is(err, dbctx.ErrInAtomic) {
					t.Errorf("%s: %q, %v; want it refused", name, got, err)
				}
			}
			// Refused before anything was sent: the transaction goes on.
			if v, err := read(b, s); v != "B" || err != nil {
				t.Errorf("after the refusals, a statement of tenant B sees %q, %v", v, err)
			}
			// Last in its batch, it is allowed.
			if _, err := batch(b, s, readSQL, "ROLLBACK TO SAVEPOINT sp"); err != nil {
				t.Errorf("a batch that rolls back last: %v", err)
			}
			if v, err := read(b, s); v != "B" || err != nil {
				t.Errorf("after a rollback to the savepoint, a statement of tenant B sees %q, %v", v, err)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	// No settings in play: it runs.
	err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if _, err := s.ExecContext(ctx, "SAVEPOINT sp"); err != nil {
				return err
			}
			got, err := batch(ctx, s, "ROLLBACK TO SAVEPOINT sp", readSQL)
			if err != nil || got != "" {
				t.Errorf("without settings: %q, %v", got, err)
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// The unit's own SQL that sets a declared setting (SET, SET LOCAL,
// set_config) leaves the settings unsure, however its result is read and
// whether or not a transaction follows: the next statement declaring the
// setting gets its own value again. Each case failed before: a batch's
// SET was forgotten when its results were closed; SET LOCAL and
// set_config(…, true) were not seen as changing anything; a session-level
// SET, once a transaction had applied the settings locally, was taken as
// undone after it.
func TestSettingsAfterOwnSQL(t *testing.T) {
	t.Parallel()
	const q = "SELECT coalesce(current_setting('app.tenant', true), '')"
	cases := map[string]func(ctx context.Context, s *dbctx.Scope) error{
		"SET in a batch": func(ctx context.Context, s *dbctx.Scope) error {
			return scopeRunner{s, 2}.exec(ctx, "SET app.tenant = 'Z'")
		},
		"SET LOCAL in Atomic": func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "SET LOCAL app.tenant = 'Z'"); err != nil {
					return err
				}
				return wantTenant(ctx, s, q, "C")
			})
		},
		"set_config(…, true) in Atomic": func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.Exec(ctx, "SELECT set_config('app.tenant', 'Z', true)"); err != nil {
					return err
				}
				return wantTenant(ctx, s, q, "C")
			})
		},
		"SET, then a transaction": func(ctx context.Context, s *dbctx.Scope) error {
			if _, err := s.ExecContext(ctx, "SELECT set_config('app.tenant', 'Z', false)"); err != nil {
				return err
			}
			return dbctx.Atomic(tenant.With(ctx, "A"), func(ctx context.Context) error {
				return wantTenant(ctx, s, q, "A")
			})
		},
	}
	eachExecMode(t, func(t *testing.T, mode string, _ int) {
		env := newEnv(t)
		p := onePoolInMode(t, env, mode, dbctx.Options{Logger: quiet(), TransactionPooling: pgtest.Pooled()})
		for name, run := range cases {
			if pgtest.Pooled() && strings.HasPrefix(name, "SET") {
				continue // session state: refused behind a pooler
			}
			err := p.Do(tenant.With(context.Background(), "C"), func(ctx context.Context, s *dbctx.Scope) error {
				if err := run(ctx, s); err != nil {
					return err
				}
				return wantTenant(ctx, s, q, "C")
			})
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
		}
	})
}

// wantTenant reads app.tenant with q and fails unless it is want.
func wantTenant(ctx context.Context, s *dbctx.Scope, q, want string) error {
	var got string
	if err := (scopeRunner{s, 2}).row(ctx, q).Scan(&got); err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("the statement saw tenant %q, its context declares %q", got, want)
	}
	return nil
}

// A *sql.Tx of BeginTx rolled back puts back the settings the session had
// before it, also those the scope applied at session level in it (on
// another driver, where the scope's statements and their settings go
// through the *sql.Tx, at session level): the scope's next statement must
// not take the values it applied in the transaction for the session's.
// A unit that ran a statement of tenant t1, then began a transaction
// under no tenant and rolled it back, read t1's rows with its next
// statement of no tenant.
func TestSettingsAfterBeginTxRollback(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "BeginTx's settings at session level: another driver, direct")
	forDrivers(t, func(t *testing.T, drv string) {
		for _, txTenant := range []string{"", "t2"} {
			for _, beside := range []bool{false, true} {
				t.Run(fmt.Sprintf("tenant=%q,beside=%v", txTenant, beside), func(t *testing.T) {
					env := newEnv(t)
					rls(t, env)
					db := openWith(t, env, drv)
					db.SetMaxOpenConns(1)
					p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
					want := seen{}
					err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
						var v seen
						if err := s.QueryRowContext(tenant.With(ctx, "t1"), seenSQL).Scan(&v.tenant, &v.items); err != nil {
							return err
						}
						if txTenant != "" {
							ctx = tenant.With(ctx, txTenant)
							want = seen{txTenant, 10}
						}
						tx, err := s.BeginTx(ctx, nil)
						if err != nil {
							return err
						}
						if err := tx.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
							return err
						}
						if v != want {
							t.Errorf("the transaction's statement saw %+v, want %+v", v, want)
						}
						if beside {
							if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
								return err
							}
							if v != want {
								t.Errorf("the scope's statement in the transaction saw %+v, want %+v", v, want)
							}
						}
						if err := tx.Rollback(); err != nil {
							return err
						}
						if err := s.QueryRowContext(ctx, seenSQL).Scan(&v.tenant, &v.items); err != nil {
							return err
						}
						if v != want {
							t.Errorf("after the rollback, the scope's statement saw %+v, want %+v", v, want)
						}
						return nil
					})
					if err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	})
}
