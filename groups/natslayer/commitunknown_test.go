package natslayer_test

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/dbscope/dbscope/internal/pgtest"
	_ "github.com/jackc/pgx/v5/stdlib"
)

// A Send inside an Atomic whose COMMIT reached PostgreSQL and committed,
// its answer lost (ErrCommitUnknown): the message is not published, and
// the group's members get a gap in its place, before what is sent after.
func TestSendCommitUnknown(t *testing.T) {
	srv := natstest.Start(t)
	in := instances(t, srv, 1, nil)[0]
	env := pgtest.New(t)
	ctx := context.Background()
	if _, err := env.Admin().ExecContext(ctx, "CREATE TABLE "+env.Schema()+".work (n int)"); err != nil {
		t.Fatal(err)
	}
	px := pgtest.NewProxy(t, env)
	db, err := sql.Open("pgx", px.DSN())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 1})
	defer pool.Close()
	r := &recorder{}
	m := in.layer.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "cu"); err != nil {
		t.Fatal(err)
	}
	rows := func() int {
		var n int
		env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM "+env.Schema()+".work").Scan(&n)
		return n
	}
	done := make(chan error, 1)
	go func() {
		done <- pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				if _, err := s.ExecContext(ctx, "INSERT INTO work VALUES (1)"); err != nil {
					return err
				}
				if err := in.layer.Send(ctx, "cu", []byte("committed work")); err != nil {
					return err
				}
				px.Mute()
				return nil
			})
		})
	}()
	eventually(t, "the row committed", func() bool { return rows() == 1 })
	px.Cut()
	px.Restore() // the database can be asked again
	err = <-done
	if !errors.Is(err, dbctx.ErrCommitUnknown) {
		t.Fatalf("want ErrCommitUnknown, got %v", err)
	}
	if err := in.layer.Send(ctx, "cu", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the marker", func() bool { return r.n.Load() >= 1 })
	got := r.messages()
	if slices.Contains(got, "committed work") || r.gaps.Load() != 1 {
		t.Fatalf("the transaction's commit unknown: member got %q and %d gaps; want the marker alone and 1 gap", got, r.gaps.Load())
	}
}
