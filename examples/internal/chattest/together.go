package chattest

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// StartTogether starts instances of the example at the same moment on
// one fresh schema, as a rollout starts replicas, connected as a
// superuser (so that each also makes the role the policy binds, and
// grants it what it needs): every one comes up and answers.
func StartTogether(t *testing.T, run RunFunc) {
	const instances = 4
	env := pgtest.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type instance struct {
		url  string
		done chan error
		logs *dbtest.Logs
	}
	var all []instance
	for range instances {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		logs, log := dbtest.NewLogs()
		in := instance{url: "http://" + ln.Addr().String(), done: make(chan error, 1), logs: logs}
		all = append(all, in)
		go func() { in.done <- run(ctx, ln, env.DSN(), env.DirectDSN(t), log) }()
	}
	client := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	for i, in := range all {
		eventually(t, fmt.Sprintf("instance %d to answer or return", i), func() bool {
			select {
			case err := <-in.done:
				in.done <- err
				return true
			default:
			}
			resp, err := client.Get(in.url + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
	}
	cancel()
	for i, in := range all {
		select {
		case err := <-in.done:
			if err != nil {
				t.Errorf("instance %d: %v", i, err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("instance %d: run did not return 30s after cancel", i)
		}
	}
}
