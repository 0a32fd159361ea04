package dbctx_test

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// told is what a pgx tracer on the connections was told: each statement
// or batch, with the prelude PreludeOf gave at its start.
type told struct {
	mu   sync.Mutex
	list []toldStmt
}

type toldStmt struct {
	kind    string // query, batch, copy
	sql     []string
	prelude dbctx.Prelude
	ok      bool // PreludeOf's
}

func (tr *told) add(kind string, conn *pgx.Conn, sql ...string) {
	pr, ok := dbctx.PreludeOf(conn)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.list = append(tr.list, toldStmt{kind, sql, pr, ok})
}

func (tr *told) take() []toldStmt {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	l := tr.list
	tr.list = nil
	return l
}

func (tr *told) TraceQueryStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	tr.add("query", conn, d.SQL)
	return ctx
}

func (tr *told) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (tr *told) TraceBatchStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	var sql []string
	for _, q := range d.Batch.QueuedQueries {
		sql = append(sql, q.SQL)
	}
	tr.add("batch", conn, sql...)
	return ctx
}

func (tr *told) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}
func (tr *told) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     {}

func (tr *told) TraceCopyFromStart(ctx context.Context, conn *pgx.Conn, d pgx.TraceCopyFromStartData) context.Context {
	tr.add("copy", conn, d.TableName.Sanitize())
	return ctx
}

func (tr *told) TraceCopyFromEnd(context.Context, *pgx.Conn, pgx.TraceCopyFromEndData) {}

var tracedTenant = dbctx.NewSetting("app.traced_tenant")

// A pgx tracer on the connections is told of every statement of a scope
// once, whatever dbscope sends before it: by pgx where pgx runs it as it
// is, by dbscope where it goes after a prelude, and PreludeOf says what
// went before. In simple_protocol mode pgx tells of the batch that
// carries both.
func TestTracerSeesEveryStatement(t *testing.T) {
	t.Parallel()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			env := newEnv(t)
			cfg, err := pgx.ParseConfig(env.DSN())
			if err != nil {
				t.Fatal(err)
			}
			cfg.DefaultQueryExecMode = mode
			tr := &told{}
			cfg.Tracer = tr
			db := stdlib.OpenDB(*cfg)
			t.Cleanup(func() { db.Close() })
			db.SetMaxOpenConns(1)
			p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 1})
			simple := mode == pgx.QueryExecModeSimpleProtocol
			ctx := context.Background()
			do := func(fn func(ctx context.Context, s *dbctx.Scope) error) []toldStmt {
				t.Helper()
				if err := p.Do(ctx, fn); err != nil {
					t.Fatal(err)
				}
				return tr.take()
			}
			// want checks that the statement was told of once, with the
			// prelude given.
			want := func(got []toldStmt, sql string, pr *dbctx.Prelude) {
				t.Helper()
				var found []toldStmt
				for _, g := range got {
					if g.sql[len(g.sql)-1] == sql {
						found = append(found, g)
					}
				}
				if len(found) != 1 {
					t.Fatalf("%q told of %d times: %+v", sql, len(found), got)
				}
				g := found[0]
				if pr == nil {
					if g.ok || g.kind == "batch" {
						t.Fatalf("%q: told of a prelude where none was sent: %+v", sql, g)
					}
					return
				}
				if simple && pr.Queries > 0 && !pr.Alone {
					pr.InBatch = true
				}
				if !g.ok || !samePrelude(g.prelude, *pr) {
					t.Fatalf("%q: told %+v (%v), want prelude %+v", sql, g.prelude, g.ok, *pr)
				}
				if pr.InBatch != (g.kind == "batch") || pr.InBatch && len(g.sql) != pr.Queries+1 {
					t.Fatalf("%q: told as a %s of %d queries, prelude %+v", sql, g.kind, len(g.sql), *pr)
				}
			}

			want(do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SELECT 1")
				return err
			}), "SELECT 1", nil)

			want(do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := queryInt(tracedTenant.With(ctx, "7"), s, "SELECT 2")
				return err
			}), "SELECT 2", &dbctx.Prelude{Settings: []string{"app.traced_tenant"}, Queries: 1})

			// SET leaves the session dirty: the next scope's first
			// statement goes after the reset.
			do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.ExecContext(ctx, "SET work_mem = '8MB'")
				return err
			})
			want(do(func(ctx context.Context, s *dbctx.Scope) error {
				_, err := s.Exec(ctx, "SELECT 3")
				return err
			}), "SELECT 3", &dbctx.Prelude{Reset: true, Queries: 9})

			got := do(func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					_, err := s.ExecContext(ctx, "SELECT 4")
					return err
				})
			})
			want(got, "SELECT 4", &dbctx.Prelude{Begin: true, Queries: 1})
			want(got, "COMMIT", nil)

			// COPY cannot share its round trip: the settings go alone,
			// told of as a statement of their own.
			got = do(func(ctx context.Context, s *dbctx.Scope) error {
				if _, err := s.ExecContext(ctx, "CREATE TEMP TABLE copied (a int)"); err != nil {
					return err
				}
				_, err := s.CopyFrom(tracedTenant.With(ctx, "8"), pgx.Identifier{"copied"}, []string{"a"}, pgx.CopyFromRows([][]any{{1}}))
				return err
			})
			want(got, "SELECT pg_catalog.set_config($1, $2, $3)", &dbctx.Prelude{Settings: []string{"app.traced_tenant"}, Queries: 1, Alone: true})
			if i := slices.IndexFunc(got, func(g toldStmt) bool { return g.kind == "copy" }); i < 0 || got[i].ok {
				t.Fatalf("COPY told of %+v", got)
			}

			// A batch after a prelude: its first queries are the prelude's.
			got = do(func(ctx context.Context, s *dbctx.Scope) error {
				b := &pgx.Batch{}
				b.Queue("SELECT 5")
				b.Queue("SELECT 6")
				return s.SendBatch(ctx, b).Close()
			})
			if len(got) != 1 || got[0].kind != "batch" || !got[0].ok || !got[0].prelude.Reset || got[0].prelude.InBatch ||
				len(got[0].sql) != got[0].prelude.Queries+2 || !strings.HasPrefix(got[0].sql[got[0].prelude.Queries], "SELECT 5") {
				t.Fatalf("batch after the reset of the temp table: told %+v", got)
			}
		})
	}
}

func samePrelude(a, b dbctx.Prelude) bool {
	return a.Reset == b.Reset && a.Begin == b.Begin && slices.Equal(a.Settings, b.Settings) && a.Local == b.Local &&
		a.Queries == b.Queries && a.Alone == b.Alone && a.InBatch == b.InBatch
}
