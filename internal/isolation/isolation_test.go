// Package isolation tests, across every way user code reaches a scope,
// that no session state crosses from one scope to the next on the same
// physical connection: each statement of the sessiontest corpus runs in
// one unit of work (dbctx.Do and its scope's methods, a *sql.Tx from
// BeginTx, Scope.Conn, Scope.Pgx, the Scope's pgx methods, dbctx.Atomic, a request through
// middleware.DB and middleware.Atomic, a message to a sync and to an
// async consumer), on a pool of one connection, and the next unit of work
// asks PostgreSQL what the session holds.
package isolation_test

import (
	"context"
	"database/sql"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/dbscope/dbscope/internal/sessiontest"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// A unit runs stmt in one unit of work of p and returns what the session
// held right after it, as sessiontest's ProbeClean sees it ("" where the
// unit failed before it could look).
type unit func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string

// runAndProbe runs stmt on the scope (its error is the case's business)
// and probes the session through it.
func runAndProbe(ctx context.Context, se *sessiontest.Env, s *dbctx.Scope, run func() error) string {
	run()
	inside, _ := se.ProbeClean(ctx, s)
	return inside
}

var units = map[string]unit{
	"Do": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			inside = runAndProbe(ctx, se, s, func() error {
				_, err := s.ExecContext(ctx, stmt)
				return err
			})
			return nil
		})
		return inside
	},
	"Do, QueryContext": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			inside = runAndProbe(ctx, se, s, func() error {
				rows, err := s.QueryContext(ctx, stmt)
				if err != nil {
					return err
				}
				return rows.Close()
			})
			return nil
		})
		return inside
	},
	"Do, Exec (pgx)": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			s.Exec(ctx, stmt)
			s.QueryRow(ctx, se.ProbeCleanSQL()).Scan(&inside)
			return nil
		})
		return inside
	},
	"Do, Query (pgx)": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			if rows, err := s.Query(ctx, stmt); err == nil {
				rows.Close()
			}
			s.QueryRow(ctx, se.ProbeCleanSQL()).Scan(&inside)
			return nil
		})
		return inside
	},
	"Do, SendBatch (pgx)": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.Queue("SELECT 1")
			b.Queue(stmt)
			s.SendBatch(ctx, b).Close()
			s.QueryRow(ctx, se.ProbeCleanSQL()).Scan(&inside)
			return nil
		})
		return inside
	},
	"Do, Query, rows.Conn (pgx)": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			rows, err := s.Query(ctx, "SELECT 1")
			if err != nil {
				t.Errorf("Query: %v", err)
				return err
			}
			c := rows.Conn()
			rows.Close()
			c.Exec(ctx, stmt)
			s.QueryRow(ctx, se.ProbeCleanSQL()).Scan(&inside)
			return nil
		})
		return inside
	},
	"Do, SendBatch, its Tx (pgx)": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			b := &pgx.Batch{}
			b.BeginTx(pgx.TxOptions{})
			b.Queue("SELECT 1")
			br := s.SendBatch(ctx, b)
			tx := br.Tx()
			if err := br.Close(); err != nil || tx == nil {
				t.Errorf("batch with BeginTx: %v (tx %v)", err, tx)
				return err
			}
			tx.Exec(ctx, stmt)
			tx.Commit(ctx)
			s.QueryRow(ctx, se.ProbeCleanSQL()).Scan(&inside)
			return nil
		})
		return inside
	},
	"BeginTx":            txUnit(true),
	"BeginTx, left open": txUnit(false),
	"Conn": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			c, err := s.Conn(ctx)
			if err != nil {
				t.Errorf("Conn: %v", err)
				return err
			}
			c.ExecContext(ctx, stmt)
			inside, _ = se.ProbeClean(ctx, c)
			return nil
		})
		return inside
	},
	"Pgx": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return s.Pgx(ctx, func(c *pgx.Conn) error {
				c.Exec(ctx, stmt)
				c.QueryRow(ctx, se.ProbeCleanSQL()).Scan(&inside)
				return nil
			})
		})
		return inside
	},
	"Atomic": func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				_, err := s.ExecContext(ctx, stmt)
				inside, _ = se.ProbeClean(ctx, s)
				return err // a failed statement rolls back
			})
		})
		return inside
	},
	"middleware.DB":     httpUnit(false),
	"middleware.Atomic": httpUnit(true),
	"wsconsumer sync":   wsUnit(false),
	"wsconsumer async":  wsUnit(true),
}

// txUnit runs stmt on a *sql.Tx from Scope.BeginTx, committed or (commit
// false) left for the boundary to roll back.
func txUnit(commit bool) unit {
	return func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var inside string
		p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			tx, err := s.BeginTx(ctx, nil)
			if err != nil {
				t.Errorf("BeginTx: %v", err)
				return err
			}
			tx.ExecContext(ctx, stmt)
			if commit {
				tx.Commit()
				inside, _ = se.ProbeClean(ctx, s)
			} else {
				inside, _ = se.ProbeClean(ctx, tx)
			}
			return nil
		})
		return inside
	}
}

// httpUnit runs stmt as a request's statement through middleware.DB (and
// middleware.Atomic), the handler answering with the probe.
func httpUnit(atomic bool) unit {
	return func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := r.Context()
			s := dbctx.From(ctx)
			s.ExecContext(ctx, r.URL.Query().Get("q"))
			inside, _ := se.ProbeClean(ctx, s)
			io.WriteString(w, inside)
		})
		if atomic {
			h = middleware.Atomic(h)
		}
		srv := httptest.NewServer(middleware.DB(p)(h))
		defer srv.Close()
		resp, err := http.Get(srv.URL + "?q=" + url.QueryEscape(stmt))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return ""
		}
		return string(body)
	}
}

// wsUnit runs stmt as one message to a sync (or async) consumer, which
// answers with the probe.
func wsUnit(async bool) unit {
	return func(t *testing.T, p *dbctx.Pool, se *sessiontest.Env, stmt string) string {
		receive := func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			var inside string
			work := func(ctx context.Context, sc *dbctx.Scope) error {
				sc.ExecContext(ctx, string(data))
				inside, _ = se.ProbeClean(ctx, sc)
				return nil
			}
			var err error
			if async {
				err = dbctx.Do(ctx, work)
			} else {
				err = work(ctx, dbctx.From(ctx))
			}
			if err != nil {
				return err
			}
			return s.SendText(ctx, inside)
		}
		style := wsconsumer.NewSync
		if async {
			style = wsconsumer.NewAsync
		}
		h := style(p, wsconsumer.Consumer{Receive: receive}, &wsconsumer.Options{Logger: quiet()})
		srv := httptest.NewUnstartedServer(h)
		srv.Config.ErrorLog = log.New(io.Discard, "", 0)
		srv.Start()
		defer srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		defer h.Shutdown(ctx) // waits for the disconnect: the scope's end
		c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		if err := c.Write(ctx, websocket.MessageText, []byte(stmt)); err != nil {
			t.Fatal(err)
		}
		_, reply, err := c.Read(ctx)
		if err != nil {
			return ""
		}
		c.Close(websocket.StatusNormalClosure, "")
		return string(reply)
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// wrapped is the exec mode of setupMode that opens the pool through
// pgtest's driver wrapping pgx's (Env.OpenWrapped): another driver, for
// dbctx.
const wrapped = "wrapped"

// setupMode makes a pool of one connection over a schema with
// sessiontest's objects, in pgx's exec mode mode ("": the DSN's), or through
// another driver (wrapped).
func setupMode(t *testing.T, mode string) (*dbctx.Pool, *pgtest.Env, *sessiontest.Env) {
	env := pgtest.New(t)
	se, cleanup, err := sessiontest.Setup(context.Background(), env.Admin(), env.Schema())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	db := env.Open(t)
	if mode == wrapped {
		db = env.OpenWrapped(t)
	} else if mode != "" {
		dsn, err := pgserver.WithParams(env.DSN(), "default_query_exec_mode", mode)
		if err != nil {
			t.Fatal(err)
		}
		if db, err = sql.Open("pgx", dsn); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
	}
	db.SetMaxOpenConns(1)
	p := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, Logger: quiet()})
	t.Cleanup(func() {
		dbtest.Clean(t, p, env)
		p.Close()
	})
	return p, env, se
}

// probe returns the state a new scope finds, and its backend. The probe
// calls a function of the schema, so its scope owes a reset (one, counted
// in Stats.Resets): probe has it run before it returns, by a clean scope
// after it, since the pool would otherwise run it whenever the connection
// is next used or leaves the keep (keep.go), which may be before or after
// the caller reads Stats.
func probe(t *testing.T, p *dbctx.Pool, se *sessiontest.Env) (state string, pid int) {
	t.Helper()
	err := p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
		var err error
		if state, err = se.Probe(ctx, s); err != nil {
			return err
		}
		return s.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid)
	})
	if err == nil {
		// One connection (setup): this scope has it only once the
		// reset has run, in its round trip or in the cleanup before.
		err = p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := s.ExecContext(ctx, "SELECT 1")
			return err
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	return state, pid
}

// inert lists the cases whose state the probe inside their own unit of
// work cannot see: there the statement fails, or takes effect only at a
// commit after the probe. The next scope's probe checks them all the same.
var inert = map[string][]string{
	// A transaction block of its own, inside one: refused with
	// ErrInAtomic before it is sent.
	"Atomic":            {"multi with commit", "set local in a transaction", "listen", "listen in function", "standard_conforming_strings off in a transaction"},
	"middleware.Atomic": {"multi with commit", "set local in a transaction", "listen", "listen in function", "standard_conforming_strings off in a transaction"},
	// LISTEN inside a transaction takes effect at its commit.
	"BeginTx, left open": {"listen", "listen in function"},
	// pgx sends a statement with rows, and a batch, through the extended
	// protocol, which takes one statement per string.
	"Do, QueryContext":    extendedProtocol,
	"Do, Query (pgx)":     extendedProtocol,
	"Do, SendBatch (pgx)": extendedProtocol,
}

// extendedProtocol lists the cases of several statements in one string.
var extendedProtocol = []string{"second statement", "string then statement", "multi with commit",
	"two prepares", "prepare, deallocate, prepare", "explain analyze execute",
	"standard_conforming_strings off in a transaction"}

func TestNoStateCrossesScopes(t *testing.T) {
	t.Parallel()
	noStateCrosses(t, "")
}

// TestNoStateCrossesScopesOtherDriver is TestNoStateCrossesScopes through
// a driver that wraps pgx's, as instrumenting drivers do, for the units
// that database/sql reaches: dbctx sees another driver than pgx's, whose
// connection it cannot look into, and takes its other paths.
func TestNoStateCrossesScopesOtherDriver(t *testing.T) {
	t.Parallel()
	noStateCrosses(t, wrapped)
}

// noStateCrosses runs every unit of units over each case of the corpus,
// in setupMode's mode, and has PostgreSQL say what the next scope finds.
func noStateCrosses(t *testing.T, mode string) {
	for name, run := range units {
		if mode == wrapped && viaPgx(name) {
			continue
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			p, _, se := setupMode(t, mode)
			base, pid := probe(t, p, se)
			baseClean := strings.Join(strings.Split(base, "\n")[:strings.Count(base, "\n")], "\n")
			for _, c := range sessiontest.Cases {
				stmt := se.Statement(c)
				before := p.Stats()
				inside := run(t, p, se, stmt)
				after, pidNow := probe(t, p, se) // which resets once
				if after != base {
					t.Errorf("%s: after %q the next scope sees: %s", c.Name, stmt, sessiontest.Diff(base, after))
				}
				if pidNow != pid {
					// Discarded (a LOAD, a broken connection): the probe
					// still compares against a fresh session.
					pid = pidNow
				}
				st := p.Stats()
				resets, raw := st.Resets-before.Resets-1, st.Discarded.Raw-before.Discarded.Raw
				switch {
				case c.Leaves == sessiontest.State && inside == baseClean && !isInert(name, c.Name):
					t.Errorf("%s: %q left nothing inside its own unit of work: the case does not test this path", c.Name, stmt)
				case rawAccess(name) && raw != 1:
					t.Errorf("%s: %q: %d connections discarded for raw access, want 1", c.Name, stmt, raw)
				case c.Leaves == sessiontest.None && alwaysResets(name) == (resets == 0):
					t.Errorf("%s: %q cost %d resets", c.Name, stmt, resets)
				}
			}
		})
	}
}

// viaPgx reports whether the unit uses pgx's own interface, which only
// pgx's driver offers.
func viaPgx(unit string) bool { return unit == "Pgx" || strings.HasSuffix(unit, "(pgx)") }

func isInert(unit, name string) bool {
	// A function named in U& form is one the text cannot name (it may be
	// set_config of search_path): the statements prepared on the
	// connection, the function's PREPARE among them, are dropped before
	// the probe, the scope's next statement.
	if name == "prepare in function named U& with UESCAPE" {
		return true
	}
	for _, n := range inert[unit] {
		if n == name {
			return true
		}
	}
	return false
}

// alwaysResets reports whether the unit runs statements the scope cannot
// see, and so resets every time.
func alwaysResets(unit string) bool {
	switch unit {
	case "BeginTx", "BeginTx, left open":
		return true
	}
	return false
}

// rawAccess reports whether the unit hands the connection itself to user
// code, which costs the connection: it is discarded at the boundary, so
// that nothing user code kept of it reaches the next scope.
func rawAccess(unit string) bool {
	switch unit {
	case "Conn", "Pgx", "Do, Query, rows.Conn (pgx)", "Do, SendBatch, its Tx (pgx)":
		return true
	}
	return false
}
