package dbctx_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/pgserver"
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

// BenchmarkReset prices the session reset, so users can judge
// Options.ResetAlways: a scope that runs SELECT 1 with and without the
// reset, one that runs a SET (and so resets), and the reset's statements,
// together and each alone, on a plain connection. pg-µs/op is the CPU time the server's backend spent per
// operation, read from /proc (when the server runs on this machine).
//
//	go test -run x -bench Reset -benchtime 5000x ./dbctx
func BenchmarkReset(b *testing.B) {
	env := pgtest.New(b)
	ctx := context.Background()
	scope := func(opts dbctx.Options, set bool) func(b *testing.B) {
		return func(b *testing.B) {
			db := env.Open(b)
			db.SetMaxOpenConns(1)
			opts.MaxWorkers = 1
			p := dbctx.New(db, &opts)
			defer p.Close()
			var pid, n int
			if err := db.QueryRow("SELECT pg_backend_pid()").Scan(&pid); err != nil {
				b.Fatal(err)
			}
			fn := func(ctx context.Context, s *dbctx.Scope) error {
				if set {
					_, err := s.ExecContext(ctx, "SET app.x = '1'")
					return err
				}
				return s.QueryRowContext(ctx, "SELECT 1").Scan(&n)
			}
			b.ReportAllocs()
			start := backendCPU(pid)
			for b.Loop() {
				if err := p.Do(ctx, fn); err != nil {
					b.Fatal(err)
				}
			}
			reportBackendCPU(b, pid, start)
			if st := p.Stats(); (opts.ResetAlways || set) && st.Resets == 0 {
				b.Fatal("no reset ran")
			}
		}
	}
	b.Run("scope", scope(dbctx.Options{}, false))
	// A SET makes the scope dirty: the reset, without the sweep of
	// prepared statements.
	b.Run("scope,SET", scope(dbctx.Options{}, true))
	// ResetAlways resets every scope, sweep included (it is for code the
	// scope cannot see).
	b.Run("scope+ResetAlways", scope(dbctx.Options{ResetAlways: true}, false))
	// The reset as a scope runs it: DefaultResetSQL and the sweep of
	// SQL-prepared statements, in one round trip.
	reset := dbctx.DefaultResetSQL + "; SELECT name FROM pg_prepared_statements WHERE from_sql"
	for _, stmt := range append([]string{"SELECT 1", reset}, strings.Split(reset, "; ")...) {
		b.Run(stmt, func(b *testing.B) {
			db := env.Open(b)
			c, err := db.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			var pid int
			if err := c.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				b.Fatal(err)
			}
			start := backendCPU(pid)
			for b.Loop() {
				if _, err := c.ExecContext(ctx, stmt); err != nil {
					b.Fatal(err)
				}
			}
			reportBackendCPU(b, pid, start)
		})
	}
}

// backendCPU returns the CPU time the process pid has used, or -1 where
// /proc does not show it (the server runs elsewhere).
func backendCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1
	}
	// The fields after the command, which is in parentheses.
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+2:]))
	if len(f) < 13 {
		return -1
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * (time.Second / 100) // USER_HZ
}

func reportBackendCPU(b *testing.B, pid int, start time.Duration) {
	end := backendCPU(pid)
	if start < 0 || end < 0 {
		return
	}
	b.ReportMetric(float64(end-start)/float64(time.Microsecond)/float64(b.N), "pg-µs/op")
}

// BenchmarkUnitOfWork prices what a unit of work declares or leaves, on a
// pool of one connection, so that each unit gets the connection the one
// before used: a lookup alone (plain); with a tenant, always the same
// (same tenant: the session carries it already) or another than the unit
// before's (tenant switch: a set_config goes with the lookup); an INSERT
// into a table with a serial key (write: it leaves the scope dirty, so
// the next unit's statement carries the reset); three lookups in an
// Atomic (atomic: BEGIN goes with the first, COMMIT alone). pg-µs/op is
// the server backend's CPU time per unit.
//
//	go test -run x -bench UnitOfWork -benchtime 5000x ./dbctx
func BenchmarkUnitOfWork(b *testing.B) {
	env := pgtest.New(b)
	ctx := context.Background()
	if _, err := env.Admin().Exec("CREATE TABLE " + env.Schema() + ".items (id int PRIMARY KEY, name text); " +
		"INSERT INTO " + env.Schema() + ".items SELECT i, 'item-' || i FROM generate_series(1, 100) i; " +
		"CREATE TABLE " + env.Schema() + ".log (id bigserial PRIMARY KEY, n int)"); err != nil {
		b.Fatal(err)
	}
	tenant := dbctx.NewSetting("app.tenant")
	tenants := []context.Context{tenant.With(ctx, "t1"), tenant.With(ctx, "t2")}
	for _, mode := range []string{"cache_statement", "cache_describe", "exec"} {
		for _, kind := range []string{"plain", "same tenant", "tenant switch", "write", "atomic"} {
			b.Run(mode+"/"+kind, func(b *testing.B) {
				dsn, err := pgserver.WithParams(env.DSN(), "default_query_exec_mode", mode)
				if err != nil {
					b.Fatal(err)
				}
				db := openDSN(b, dsn)
				db.SetMaxOpenConns(1)
				p := dbctx.New(db, &dbctx.Options{MaxWorkers: 1})
				defer p.Close()
				var pid int
				if err := db.QueryRow("SELECT pg_backend_pid()").Scan(&pid); err != nil {
					b.Fatal(err)
				}
				var name string
				i := 0
				fn := func(ctx context.Context, s *dbctx.Scope) error {
					i++
					switch kind {
					case "write":
						_, err := s.ExecContext(ctx, "INSERT INTO log (n) VALUES ($1)", i)
						return err
					case "atomic":
						return dbctx.Atomic(ctx, func(ctx context.Context) error {
							for range 3 {
								if err := s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", i%100+1).Scan(&name); err != nil {
									return err
								}
							}
							return nil
						})
					}
					return s.QueryRowContext(ctx, "SELECT name FROM items WHERE id = $1", i%100+1).Scan(&name)
				}
				b.ReportAllocs()
				start := backendCPU(pid)
				for b.Loop() {
					uctx := ctx
					switch kind {
					case "same tenant":
						uctx = tenants[0]
					case "tenant switch":
						uctx = tenants[i%2]
					}
					if err := p.Do(uctx, fn); err != nil {
						b.Fatal(err)
					}
				}
				reportBackendCPU(b, pid, start)
			})
		}
	}
}
