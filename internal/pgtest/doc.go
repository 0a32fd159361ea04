// Package pgtest gives each test its own isolated schema on a real
// PostgreSQL server, plus helpers to inspect and disturb the server-side
// backends that a test opens, and a TCP proxy for fault injection.
//
// # The base server
//
// The server is resolved once per process (see [pgserver.Start]), in this order:
//
//  1. $DATABASE_URL, if set;
//  2. the local server at 127.0.0.1:5432, as user postgres, database postgres,
//     if it accepts a connection within 2 seconds;
//  3. a throwaway cluster made with initdb and pg_ctl (found on PATH or under
//     /usr/lib/postgresql/*/bin, newest version first) in a temporary
//     directory, listening only on a unix socket inside that directory. It is
//     stopped and removed when the tests end (see [Main]).
//
// Setting DBSCOPE_PGTEST_FORCE_CLUSTER=1 ([pgserver.ForceClusterEnv]) skips steps 1
// and 2, which is how the throwaway-cluster path is exercised on a machine
// that has a server running. If no PostgreSQL can be found at all, the tests
// that need one fail with a message saying how to get one.
//
// # Use in tests
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		e := pgtest.New(t)   // fresh schema, dropped at cleanup
//		db := e.Open(t)      // *sql.DB on the pgx driver, search_path = e.Schema()
//		...
//		n := e.Terminate(t)  // kill this test's backends, wait until gone
//	}
//
// [Main] also checks for leaked goroutines with go.uber.org/goleak once all
// tests have run.
//
// Every connection made through [Env.DSN] logs in as a role of the test's
// own ([Env.Role], a superuser like the base server's user, whose
// search_path is the schema) and carries a unique application_name
// ([Env.AppName]). No startup parameter but application_name is needed,
// so the tests run through a pooler in transaction mode too (PgBouncer
// refuses search_path there): point $DATABASE_URL at the pooler and
// [AdminURLEnv] at PostgreSQL itself. [Env.Terminate], [Env.Backends] and
// [Env.IdleInTransaction] find the test's backends by the role, which a
// pooler does not rename, without touching those of tests running in
// parallel.
package pgtest
