package dbctx_test

import (
	"context"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5/pgconn"
)

const msgMisconfigured = "dbctx: cannot connect: misconfiguration"

// connectTries is how many units of work each case of the connect tests
// runs against a database it cannot reach.
const connectTries = 5

func selectOne(ctx context.Context, s *dbctx.Scope) error {
	_, err := queryInt(ctx, s, "SELECT 1")
	return err
}

// dsn returns s, a connection string pgserver made; it panics on err,
// which only a base connection string it cannot parse makes.
func dsn(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

// Each way of failing to connect, injected for real, is told apart: a
// misconfiguration (ErrMisconfigured) from an outage (ErrUnavailable),
// each counted in Stats; the misconfiguration logged at ERROR once
// however many units of work meet it, the outage's warnings aggregated
// into one record and, at Close, one more with their count.
func TestConnectErrors(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the faults are injected in the connection string, which names PgBouncer")
	env := newEnv(t)
	admin := env.Admin()
	// A role that may not connect at all: over its connection limit from
	// the first connection (superusers, as pgtest's roles are, are exempt).
	limited := env.Role() + "_limited"
	mustExec(t, admin, `CREATE ROLE "`+limited+`" LOGIN CONNECTION LIMIT 0`)
	t.Cleanup(func() { admin.Exec(`DROP ROLE IF EXISTS "` + limited + `"`) })
	startingUp := pgtest.NewRefuser(t, "57P03", "the database system is starting up")
	// A database that does not allow connections (as template0).
	closedDB := env.Schema() + "_closed"
	mustExec(t, admin, `CREATE DATABASE "`+closedDB+`" ALLOW_CONNECTIONS false`)
	t.Cleanup(func() { admin.Exec(`DROP DATABASE IF EXISTS "` + closedDB + `"`) })

	for _, tc := range []struct {
		name string
		dsn  string
		want error  // ErrMisconfigured or ErrUnavailable
		code string // the server's SQLSTATE, if it answered
	}{
		{"database does not exist", env.MissingDatabase(t), dbctx.ErrMisconfigured, "3D000"},
		{"role does not exist", env.MissingRole(t), dbctx.ErrMisconfigured, "28000"},
		{"database does not allow connections", dsn(pgserver.WithParams(env.DSN(), "dbname", closedDB)),
			dbctx.ErrMisconfigured, "55000"},
		{"unknown host", env.UnknownHost(t), dbctx.ErrMisconfigured, ""},
		{"TLS required, the server has none", dsn(pgserver.WithParams(
			dsn(pgserver.WithTCPAddr(env.DSN(), startingUp.Addr())), "sslmode", "require")),
			dbctx.ErrMisconfigured, ""},
		{"the server's certificate not trusted", dsn(pgserver.WithParams(env.DSN(), "sslmode", "verify-full")),
			dbctx.ErrMisconfigured, ""},
		// A startup parameter the server takes only from its own
		// configuration, or never: 55P02, as lasting as an unknown one.
		{"startup parameter not settable at connect", dsn(pgserver.WithParams(env.DSN(), "max_connections", "10")),
			dbctx.ErrMisconfigured, "55P02"},
		{"read-only startup parameter", dsn(pgserver.WithParams(env.DSN(), "server_version", "1")),
			dbctx.ErrMisconfigured, "55P02"},
		{"connection string does not parse", "postgres://postgres@127.0.0.1:notaport/postgres",
			dbctx.ErrMisconfigured, ""},
		{"not PostgreSQL at the address (an HTTP server)", dsn(pgserver.WithTCPAddr(env.DSN(), notPostgres(t))),
			dbctx.ErrMisconfigured, ""},
		{"connection refused", env.Refused(t), dbctx.ErrUnavailable, ""},
		{"starting up", dsn(pgserver.WithParams(dsn(pgserver.WithTCPAddr(env.DSN(), startingUp.Addr())), "sslmode", "disable")),
			dbctx.ErrUnavailable, "57P03"},
		{"too many connections", dsn(pgserver.WithUser(env.DSN(), limited, "")),
			dbctx.ErrUnavailable, "53300"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs, logger := dbtest.NewLogs()
			p := dbctx.New(openDSN(t, tc.dsn), &dbctx.Options{Logger: logger})
			p.SetLogInterval(time.Hour) // nothing reported by the clock: Close does
			for range connectTries {
				err := p.Do(context.Background(), selectOne)
				other := dbctx.ErrUnavailable
				if tc.want == dbctx.ErrUnavailable {
					other = dbctx.ErrMisconfigured
				}
				if !errors.Is(err, tc.want) || errors.Is(err, other) {
					t.Fatalf("got %v, want %v", err, tc.want)
				}
				var pe *pgconn.PgError
				if tc.code != "" && (!errors.As(err, &pe) || pe.Code != tc.code) {
					t.Fatalf("got %v, want SQLSTATE %s", err, tc.code)
				}
			}
			st := p.Stats()
			if st.InUse != 0 || st.Pinned != 0 {
				t.Errorf("after the failures: %d slots in use, %d pinned", st.InUse, st.Pinned)
			}
			misconf, unavail := 0, connectTries
			if tc.want == dbctx.ErrMisconfigured {
				misconf, unavail = connectTries, 0
			}
			// A unit of work meets the failure once: no retry of a
			// connect that failed.
			if st.Misconfigured != int64(misconf) || st.Unavailable != int64(unavail) {
				t.Errorf("Stats: Misconfigured %d, Unavailable %d; want %d, %d", st.Misconfigured, st.Unavailable, misconf, unavail)
			}
			p.Close()
			errs, warns := logs.Count(slog.LevelError, msgMisconfigured), logs.Count(slog.LevelWarn, "dbctx: database unavailable")
			if tc.want == dbctx.ErrMisconfigured {
				if errs != 1 || warns != 0 {
					t.Errorf("%d ERROR, %d WARN records, want 1 ERROR:\n%s", errs, warns, logs)
				}
				return
			}
			recs := logs.AtLeast(slog.LevelWarn)
			if errs != 0 || warns != 2 || len(recs) != 2 || recs[1].Attrs["repeated"] != "4" {
				t.Errorf("want 2 WARN records, the first failure and, at Close, the 4 others:\n%s", logs)
			}
		})
	}
}

// A wrong password is a misconfiguration: in a cluster of the test's own
// that asks for passwords (SCRAM), a role with one logs in with the
// right password, and is refused with 28P01 with a wrong one, logged
// once.
func TestWrongPassword(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pgserver.StartCluster(ctx, t.Logf,
		"local all postgres trust\nlocal all all scram-sha-256\n")
	if err != nil {
		t.Skipf("no throwaway cluster: %v", err)
	}
	t.Cleanup(srv.Stop)
	mustExec(t, openDSN(t, srv.URL), "CREATE ROLE app LOGIN PASSWORD 'right'")

	right := dsn(pgserver.WithUser(srv.URL, "app", "right"))
	rp := dbctx.New(openDSN(t, right), nil)
	defer rp.Close()
	if err := rp.Do(ctx, selectOne); err != nil {
		t.Fatalf("the right password: %v", err)
	}
	logs, logger := dbtest.NewLogs()
	wrong := dsn(pgserver.WithUser(srv.URL, "app", "wrong"))
	p := dbctx.New(openDSN(t, wrong), &dbctx.Options{Logger: logger})
	defer p.Close()
	for range connectTries {
		err := p.Do(ctx, selectOne)
		var pe *pgconn.PgError
		if !errors.Is(err, dbctx.ErrMisconfigured) || !errors.As(err, &pe) || pe.Code != "28P01" {
			t.Fatalf("a wrong password: %v, want ErrMisconfigured with SQLSTATE 28P01", err)
		}
	}
	if n := p.Stats().Misconfigured; n != connectTries {
		t.Errorf("Stats.Misconfigured %d, want %d", n, connectTries)
	}
	if n := logs.Count(slog.LevelError, msgMisconfigured); n != 1 || len(logs.Records()) != 1 {
		t.Errorf("want 1 ERROR record:\n%s", logs)
	}
}

// A misconfiguration is logged once per cause until a connection
// succeeds: then its return is news again. The database named is
// missing, then made (the pool connects), then dropped.
func TestMisconfigurationLoggedAgainAfterRecovery(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the database is named in the connection string, which names PgBouncer")
	env := newEnv(t)
	name := env.Schema() + "_later"
	logs, logger := dbtest.NewLogs()
	p := dbctx.New(openDSN(t, dsn(pgserver.WithParams(env.DSN(), "dbname", name))), &dbctx.Options{Logger: logger})
	defer p.Close()
	ctx := context.Background()
	fail := func(what string, wantLogged int) {
		t.Helper()
		for range 3 {
			if err := p.Do(ctx, selectOne); !errors.Is(err, dbctx.ErrMisconfigured) {
				t.Fatalf("%s: %v, want ErrMisconfigured", what, err)
			}
		}
		if n := logs.Count(slog.LevelError, msgMisconfigured); n != wantLogged {
			t.Fatalf("%s: %d ERROR records, want %d:\n%s", what, n, wantLogged, logs)
		}
	}
	fail("missing", 1)
	mustExec(t, env.Admin(), `CREATE DATABASE "`+name+`"`)
	if err := p.Do(ctx, selectOne); err != nil {
		t.Fatalf("once made: %v", err)
	}
	mustExec(t, env.Admin(), `DROP DATABASE "`+name+`" WITH (FORCE)`)
	p.DB().SetMaxIdleConns(0) // the connection to the dropped database is gone
	fail("dropped", 2)
	if !strings.Contains(logs.Records()[1].Attrs["err"], "3D000") {
		t.Errorf("the second record: %v", logs.Records()[1])
	}
}

// lateCtx is a context whose deadline has passed where it has not yet
// noticed: its Err is still nil, as a context's is for the moment between
// its deadline and its timer firing, while a dial given that deadline
// times out.
type lateCtx struct{ context.Context }

func (lateCtx) Deadline() (time.Time, bool) { return time.Now().Add(-time.Millisecond), true }

// A connect that times out because the caller's deadline passed is the
// caller's deadline, not an outage: it wraps context.DeadlineExceeded, not
// ErrUnavailable, and is neither counted nor logged as one.
func TestConnectPastDeadline(t *testing.T) {
	t.Parallel()
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	p, _ := newPool(t, &dbctx.Options{Logger: logger})
	err := p.Do(lateCtx{context.Background()}, selectOne)
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, dbctx.ErrUnavailable) {
		t.Fatalf("Do past its deadline: %v; want context.DeadlineExceeded, not ErrUnavailable", err)
	}
	if n := p.Stats().Unavailable; n != 0 {
		t.Errorf("Stats.Unavailable = %d, want 0", n)
	}
	if strings.Contains(logs.String(), "unavailable") {
		t.Errorf("logged as an outage:\n%s", logs.String())
	}
	if err := p.Do(context.Background(), selectOne); err != nil {
		t.Fatalf("Do after: %v", err)
	}
}

// A host that accepts the connection and never answers holds a unit of
// work with no deadline of its own for ConnectTimeout at most: then it
// gets ErrUnavailable, counted and logged as an outage, and its slot is
// free again.
func TestConnectTimeout(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c) // never answered, never closed until the end
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	var logs syncBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	db := openDSN(t, "postgres://nobody@"+ln.Addr().String()+"/x?sslmode=disable")
	p := dbctx.New(db, &dbctx.Options{MaxWorkers: 1, ConnectTimeout: 200 * time.Millisecond, Logger: logger})
	t.Cleanup(func() { p.Close() })
	noHang(t, "a unit of work with no deadline", func() {
		err = p.Do(context.Background(), selectOne)
	})
	if !errors.Is(err, dbctx.ErrUnavailable) {
		t.Fatalf("Do: %v, want ErrUnavailable", err)
	}
	if st := p.Stats(); st.Unavailable != 1 || st.InUse != 0 {
		t.Errorf("Stats: %+v, want one unavailable and no slot held", st)
	}
	if !strings.Contains(logs.String(), "database unavailable") || !strings.Contains(logs.String(), "ConnectTimeout") {
		t.Errorf("not logged as an outage past ConnectTimeout:\n%s", logs.String())
	}
}

// notPostgres returns the address of a server that answers every
// connection as an HTTP server answers what it cannot read, and closes
// it: a connection string with the wrong port.
func notPostgres(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Read(make([]byte, 1024))
				c.Write([]byte("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	return ln.Addr().String()
}

// fakeServer returns the address of a server that runs serve on every
// connection it accepts, and closes it after.
func fakeServer(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				serve(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// A connect that fails without a word from the server (it closed the
// connection, or sent nothing PostgreSQL would before ConnectTimeout) is
// an outage, until the pool's probe of the address finds another service
// there: then every later failure is a misconfiguration, logged once at
// ERROR with what answered. A server that answers as PostgreSQL does, or
// not at all, stays an outage.
func TestNotPostgresAtAddress(t *testing.T) {
	t.Parallel()
	https := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(https.Close)
	https.Config.ErrorLog = log.New(io.Discard, "", 0)
	smtp := fakeServer(t, func(c net.Conn) {
		c.Write([]byte("220 mail.example.com ESMTP\r\n"))
		io.Copy(io.Discard, c) // as an SMTP server waits for a command line
	})
	// A proxy whose backend is down, and a PostgreSQL that answers the
	// SSLRequest and then closes (one shutting down between the two).
	gone := fakeServer(t, func(c net.Conn) {})
	shutting := fakeServer(t, func(c net.Conn) {
		if _, err := io.ReadFull(c, make([]byte, 8)); err == nil {
			c.Write([]byte("N"))
		}
	})
	for _, tc := range []struct {
		name, addr, sslmode string
		want                error  // after the probe
		what                string // in the ERROR record
	}{
		{"an HTTPS server, sslmode=disable", https.Listener.Addr().String(), "disable", dbctx.ErrMisconfigured, "a TLS server"},
		{"an HTTPS server, sslmode=prefer", https.Listener.Addr().String(), "prefer", dbctx.ErrMisconfigured, "a TLS server"},
		{"an HTTPS server, sslmode=require", https.Listener.Addr().String(), "require", dbctx.ErrMisconfigured, "a TLS server"},
		{"an SMTP server", smtp, "disable", dbctx.ErrMisconfigured, `SSLRequest with "220 mail.example.com ESMTP\r\n"`},
		{"closed at once", gone, "prefer", dbctx.ErrUnavailable, ""},
		{"closed after the SSLRequest's answer", shutting, "prefer", dbctx.ErrUnavailable, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			logs, logger := dbtest.NewLogs()
			db := openDSN(t, "postgres://nobody@"+tc.addr+"/x?sslmode="+tc.sslmode)
			p := dbctx.New(db, &dbctx.Options{ConnectTimeout: 300 * time.Millisecond, Logger: logger})
			// The probe's TLS handshake with the HTTPS server took more
			// than probeWait on a loaded machine, and found nothing: the
			// probe waits here as long as the handshake takes.
			p.SetProbeWait(time.Minute)
			defer p.Close()
			// The first failure says nothing of what answered: an outage,
			// and a probe.
			if err := p.Do(context.Background(), selectOne); !errors.Is(err, dbctx.ErrUnavailable) {
				t.Fatalf("the first connect: %v, want ErrUnavailable", err)
			}
			dbtest.Eventually(t, "the probe's end", func() bool { return p.ProbesDone() > 0 })
			for range 3 {
				err := p.Do(context.Background(), selectOne)
				if !errors.Is(err, tc.want) {
					t.Fatalf("after the probe: %v, want %v", err, tc.want)
				}
				if tc.what != "" && !strings.Contains(err.Error(), "not PostgreSQL at "+tc.addr) {
					t.Fatalf("the error does not say what is wrong: %v", err)
				}
			}
			errs := logs.Count(slog.LevelError, msgMisconfigured)
			if tc.what == "" {
				if errs != 0 {
					t.Fatalf("an outage logged as a misconfiguration:\n%s", logs)
				}
				return
			}
			if errs != 1 || !strings.Contains(logs.AtLeast(slog.LevelError)[0].Attrs["err"], tc.what) {
				t.Fatalf("want one ERROR record saying %s:\n%s", tc.what, logs)
			}
			if st := p.Stats(); st.Misconfigured != 3 || st.Unavailable != 1 {
				t.Errorf("Stats: Misconfigured %d, Unavailable %d; want 3, 1", st.Misconfigured, st.Unavailable)
			}
		})
	}
}

// Behind PgBouncer, which refuses with 08P01 whatever the cause, a role it
// does not know is a misconfiguration, told by PgBouncer's message.
func TestMisconfiguredBehindPgBouncer(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	b := pgtest.StartPgBouncer(t, nil)
	logs, logger := dbtest.NewLogs()
	p := dbctx.New(openDSN(t, dsn(pgserver.WithUser(b.DSN(env), env.Schema()+"_missing", "x"))),
		&dbctx.Options{Logger: logger, TransactionPooling: true})
	defer p.Close()
	for range connectTries {
		if err := p.Do(context.Background(), selectOne); !errors.Is(err, dbctx.ErrMisconfigured) {
			t.Fatalf("a role PgBouncer does not know: %v, want ErrMisconfigured", err)
		}
	}
	if n := logs.Count(slog.LevelError, msgMisconfigured); n != 1 {
		t.Errorf("want 1 ERROR record:\n%s", logs)
	}
}

// PgBouncer refuses with 08P01 whatever the cause, also a password its
// auth_file refuses and a startup parameter it does not pass on, and it
// passes PostgreSQL's refusal of its server login on with that code and
// the server's text: each that no retry fixes is a misconfiguration, told
// by its message; its outages stay outages.
func TestPgBouncerRefusalsClassified(t *testing.T) {
	for _, tc := range []struct {
		msg  string
		want bool
	}{
		{"no such user", true},
		{"no such database: app", true},
		{"password authentication failed", true},
		{"SASL authentication failed", true}, // auth_type scram-sha-256: a wrong password, or a role it does not know
		{"unsupported startup parameter: search_path", true},
		{`database "app_typo" does not exist`, true},
		{`database "template0" is not currently accepting connections`, true},
		{`role "app" does not exist`, true},
		{`role "app" is not permitted to log in`, true},
		{`no pg_hba.conf entry for host "10.0.0.5", user "app", database "app", no encryption`, true},
		{`permission denied for database "app"`, true},
		{"pgbouncer cannot connect to server", false},
		{"server login has been failing, try again later (server_login_retry)", false},
		{"query_wait_timeout", false},
		{"no more connections allowed (max_client_conn)", false},
		{`database "`, false}, // a prefix and a suffix that overlap are not a match
	} {
		got := dbctx.IsMisconfiguration(&pgconn.PgError{Severity: "FATAL", Code: "08P01", Message: tc.msg}, false)
		if got != tc.want {
			t.Errorf("08P01 %q: misconfiguration %v, want %v", tc.msg, got, tc.want)
		}
	}
}

// A startup parameter PgBouncer does not pass on (search_path in the
// connection string, without ignore_startup_parameters) is its own 08P01:
// a misconfiguration, not an outage. (PostgreSQL's refusals it passes on
// are TestPgBouncerRefusalsClassified's: this PgBouncer's auth_query
// holds a client whose database does not exist, without a word.)
func TestMisconfiguredBehindPgBouncerPassedOn(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	b := pgtest.StartPgBouncer(t, nil)
	for _, tc := range []struct{ name, dsn string }{
		{"a startup parameter PgBouncer does not pass on", b.DSN(env, "search_path", "public")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logs, logger := dbtest.NewLogs()
			p := dbctx.New(openDSN(t, tc.dsn), &dbctx.Options{Logger: logger, TransactionPooling: true})
			defer p.Close()
			if err := p.Do(context.Background(), selectOne); !errors.Is(err, dbctx.ErrMisconfigured) {
				t.Fatalf("%v, want ErrMisconfigured", err)
			}
			if n := logs.Count(slog.LevelError, msgMisconfigured); n != 1 {
				t.Errorf("want 1 ERROR record:\n%s", logs)
			}
		})
	}
}

// Behind a PgBouncer of auth_type scram-sha-256, a wrong password is
// refused with "SASL authentication failed" (and so is a role it does
// not know: it does not tell them apart): a misconfiguration. It was
// ErrUnavailable, a 503 for good.
func TestMisconfiguredBehindScramPgBouncer(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	b := pgtest.StartPgBouncer(t, &pgtest.PgBouncerOptions{AuthType: "scram-sha-256"})
	logs, logger := dbtest.NewLogs()
	p := dbctx.New(openDSN(t, b.DSN(env, "password", "not-the-password")), &dbctx.Options{Logger: logger, TransactionPooling: true})
	defer p.Close()
	err := p.Do(context.Background(), selectOne)
	if !errors.Is(err, dbctx.ErrMisconfigured) {
		t.Fatalf("%v, want ErrMisconfigured", err)
	}
	if !strings.Contains(err.Error(), "SASL authentication failed") {
		t.Fatalf("%v: not PgBouncer's SCRAM refusal", err)
	}
	if n := logs.Count(slog.LevelError, msgMisconfigured); n != 1 {
		t.Errorf("want 1 ERROR record:\n%s", logs)
	}
}

// A unit of work that finds every connection the *sql.DB allows in use
// (its MaxOpenConns below MaxWorkers, the others held) gets ErrBusy at
// ConnectTimeout, counted and logged as such: the database is up, and no
// connect was tried, so it is not ErrUnavailable.
func TestSQLDBFull(t *testing.T) {
	t.Parallel()
	env := newEnv(t)
	db := openDSN(t, env.DSN())
	db.SetMaxOpenConns(1)
	logs, logger := dbtest.NewLogs()
	p := poolOn(t, env, db, &dbctx.Options{MaxWorkers: 2, ConnectTimeout: 200 * time.Millisecond, Logger: logger})
	hold, held := make(chan struct{}), make(chan error, 1)
	go func() {
		held <- p.Do(context.Background(), func(ctx context.Context, s *dbctx.Scope) error {
			_, err := queryInt(ctx, s, "SELECT 1")
			hold <- struct{}{}
			<-hold
			return err
		})
	}()
	<-hold
	err := p.Do(context.Background(), selectOne)
	hold <- struct{}{}
	if herr := <-held; herr != nil {
		t.Fatal(herr)
	}
	if !errors.Is(err, dbctx.ErrBusy) || errors.Is(err, dbctx.ErrUnavailable) {
		t.Fatalf("the *sql.DB full: %v, want ErrBusy", err)
	}
	if st := p.Stats(); st.Busy != 1 || st.Unavailable != 0 {
		t.Errorf("Stats: Busy %d, Unavailable %d; want 1, 0", st.Busy, st.Unavailable)
	}
	if logs.Count(slog.LevelWarn, "dbctx: the *sql.DB's connections are all in use") != 1 || logs.Count(slog.LevelWarn, "dbctx: database unavailable") != 0 {
		t.Errorf("want one WARN saying the *sql.DB is full:\n%s", logs)
	}
}
