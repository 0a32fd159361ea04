package groups_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// lockedBuffer is a log's output, written from the listener's goroutine.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A ListenDSN whose options set a parameter whose name contains one of
// the listener's (deadlock_timeout, lock_timeout) keeps the listener's
// setting: only a ListenDSN that sets the setting itself keeps its own.
// Read as setting lock_timeout, it left the listener without it: its
// read of a body whose table is locked waited for the lock until the
// statement_timeout, not lock_timeout. PostgreSQL's error, logged, says
// which ended it; a ListenDSN that sets lock_timeout (to 0, here) still
// keeps its own.
func TestListenDSNOptionsNamingAnother(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the listener goes through a proxy of the test's, to the server: LISTEN needs a direct connection")
	for _, tc := range []struct{ options, want string }{
		{"-cdeadlock_timeout=2s", "55P03"}, // lock_timeout, the listener's
		{"--lock-timeout=0", "57014"},      // none: statement_timeout ends it
	} {
		t.Run(tc.options, func(t *testing.T) {
			t.Parallel()
			env := pgtest.New(t)
			rx := pgtest.NewProxy(t, env)
			listenDSN, err := pgserver.WithParams(rx.DSN(), "options", tc.options)
			if err != nil {
				t.Fatal(err)
			}
			var log lockedBuffer
			in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: listenDSN, SampleEvery: time.Hour,
				Logger: slog.New(slog.NewTextHandler(&log, nil))})[0]
			recs := members(t, []*instance{in}, 1, bigMembers, "locked")
			ctx := context.Background()
			rx.Stall()
			if err := in.layer.Send(ctx, "locked", body(0, 1, 20000, false)); err != nil {
				t.Fatal(err)
			}
			tx, err := env.Admin().BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "LOCK TABLE "+env.Schema()+".dbscope_groups_payloads IN ACCESS EXCLUSIVE MODE"); err != nil {
				t.Fatal(err)
			}
			rx.Restore()
			dbtest.Eventually(t, "the large message's gap", func() bool { return recs[0].n.Load() >= 1 })
			tx.Rollback()
			if got := log.String(); !strings.Contains(got, "SQLSTATE "+tc.want) {
				t.Fatalf("the listener's read of the body was not ended with SQLSTATE %s; logged:\n%s", tc.want, got)
			}
		})
	}
}
