package natstest

import (
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func greets(url string) bool { return answers(strings.TrimPrefix(url, "nats://")) }

// The server answers once Start returns, not once killed, and again on
// the same URL after Restart; its monitoring answers.
func TestKillRestart(t *testing.T) {
	srv := Start(t)
	if !greets(srv.URL) {
		t.Fatal("no server after Start")
	}
	if n := srv.Subscriptions(t, "nobody"); n != 0 {
		t.Fatalf("%d subscriptions", n)
	}
	srv.Kill(t)
	if greets(srv.URL) {
		t.Fatal("a server after Kill")
	}
	srv.Restart(t)
	if !greets(srv.URL) {
		t.Fatal("no server after Restart")
	}
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if greets(srv.URL) {
		t.Fatal("a server after Stop")
	}
}
