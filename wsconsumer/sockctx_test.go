package wsconsumer

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	_ "github.com/jackc/pgx/v5/stdlib"
)

type key struct{}

// socketCtx behaves as context.WithCancel over the request's values, for
// context.AfterFunc and cancelable children too, including through a
// dbctx scope above it (what callbacks get).
func TestSocketCtx(t *testing.T) {
	sock := newSocketCtx(context.WithValue(context.Background(), key{}, "v"))
	db, err := sql.Open("pgx", "postgres://127.0.0.1:1/none") // never connects
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx, scope := dbctx.New(db, nil).Scope(sock)
	defer scope.End()
	if ctx.Value(key{}) != "v" || ctx.Err() != nil {
		t.Fatalf("value %v, err %v", ctx.Value(key{}), ctx.Err())
	}
	ran := make(chan string, 3)
	context.AfterFunc(ctx, func() { ran <- "after" })
	stopped := context.AfterFunc(ctx, func() { ran <- "stopped" })
	child, cancelChild := context.WithTimeout(ctx, time.Hour)
	defer cancelChild()
	gone, cancelGone := context.WithCancel(ctx)
	cancelGone()
	if !stopped() {
		t.Fatal("stop before cancel reported false")
	}
	if n := len(sock.after); n != 2 {
		t.Fatalf("%d functions registered, want 2 (the AfterFunc and the live child)", n)
	}
	sock.cancel()
	sock.cancel()
	<-child.Done()
	if !errors.Is(child.Err(), context.Canceled) || !errors.Is(ctx.Err(), context.Canceled) || gone.Err() == nil {
		t.Fatalf("child %v, ctx %v", child.Err(), ctx.Err())
	}
	if got := <-ran; got != "after" {
		t.Fatalf("ran %q", got)
	}
	late := make(chan struct{})
	if context.AfterFunc(ctx, func() { close(late) })() {
		t.Error("stop after cancel reported true")
	}
	<-late
	select {
	case got := <-ran:
		t.Fatalf("ran %q too", got)
	default:
	}
}
