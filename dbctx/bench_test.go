package dbctx_test

import (
	"context"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// BenchmarkRawConn is the baseline for BenchmarkDo: the same query on a
// plain *sql.DB with the same connection limits.
func BenchmarkRawConn(b *testing.B) {
	env := pgtest.New(b)
	db := env.Open(b)
	dbctx.New(db, &dbctx.Options{MaxWorkers: 4}) // same MaxOpenConns/MaxIdleConns
	ctx := context.Background()
	var n int
	b.ReportAllocs()
	for b.Loop() {
		if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&n); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDo(b *testing.B) {
	env := pgtest.New(b)
	p := dbctx.New(env.Open(b), &dbctx.Options{MaxWorkers: 4})
	ctx := context.Background()
	var n int
	fn := func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := p.Do(ctx, fn); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDoInScope is Do as handlers call it: on the scope of the
// request or socket, which it reuses.
func BenchmarkDoInScope(b *testing.B) {
	env := pgtest.New(b)
	p := dbctx.New(env.Open(b), &dbctx.Options{MaxWorkers: 4})
	ctx, s := p.Scope(context.Background())
	defer s.End()
	var n int
	fn := func(ctx context.Context, s *dbctx.Scope) error {
		return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := dbctx.Do(ctx, fn); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScopeUnused is a request's scope that never touches the
// database: what every request pays under the middleware.
func BenchmarkScopeUnused(b *testing.B) {
	env := pgtest.New(b)
	p := dbctx.New(env.Open(b), nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		sctx, s := p.Scope(ctx)
		if dbctx.From(sctx) != s {
			b.Fatal("scope not found")
		}
		s.End()
	}
}
