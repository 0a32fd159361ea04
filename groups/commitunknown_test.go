package groups_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// Over PostgreSQL, a Send inside an Atomic of another pool (published at
// its commit) whose commit's outcome is unknown (ErrCommitUnknown,
// PostgreSQL having committed): the message does not go out, and the
// group's members get a gap in its place, before what is sent after.
func TestSendCommitUnknownOtherPool(t *testing.T) {
	env := pgtest.New(t)
	ctx := context.Background()
	in := pgInstances(t, env, 1, nil)[0]
	recs := members(t, []*instance{in}, 1, nil, "o")
	if _, err := env.Admin().ExecContext(ctx, "CREATE TABLE "+env.Schema()+".work (n int)"); err != nil {
		t.Fatal(err)
	}
	px := pgtest.NewProxy(t, env)
	db, err := sql.Open("pgx", px.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	other := dbctx.New(db, &dbctx.Options{MaxWorkers: 1})
	defer other.Close()
	rowsN := func() int {
		var n int
		env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM "+env.Schema()+".work").Scan(&n)
		return n
	}
	done := make(chan error, 1)
	go func() {
		done <- other.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO work VALUES (1)"); err != nil {
					return err
				}
				if err := in.layer.Send(ctx, "o", []byte(strings.Repeat("L", 20000))); err != nil {
					return err
				}
				px.Mute()
				return nil
			})
		})
	}()
	dbtest.Eventually(t, "the row committed", func() bool { return rowsN() == 1 })
	px.Cut()
	err = <-done
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("want ErrCommitUnknown, got %v", err)
	}
	if err := in.layer.Send(ctx, "o", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "marker", func() bool { return strings.HasSuffix(events(recs[0]), "marker") })
	if got := events(recs[0]); got != "gap,marker" {
		t.Fatalf("committed (row present), the message's commit unknown: member got %q, want a gap, then the marker", got)
	}
	if n := in.layer.Stats().Gaps; n != 1 {
		t.Errorf("Stats.Gaps = %d, want 1", n)
	}
}
