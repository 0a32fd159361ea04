package pgtest

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// Main runs the tests of a package that uses pgtest; call it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// After m.Run it closes the shared admin pool, stops the throwaway cluster
// if one was started, and then, if the tests passed, checks with goleak that
// no goroutine outlived them: a leak is printed and fails the run with exit
// code 1. It does not return.
//
// Where $DATABASE_URL is unset, Main resolves the server first and sets
// $DATABASE_URL to it, so that runnable examples, which read
// $DATABASE_URL as users' code does, run against it too; likewise
// $LISTEN_DATABASE_URL, a connection straight to PostgreSQL (the admin
// URL behind a pooler), for the listeners of groups' examples.
func Main(m *testing.M) {
	if os.Getenv("DATABASE_URL") == "" {
		srv, err := resolve()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			shutdown()
			os.Exit(1)
		}
		os.Setenv("DATABASE_URL", srv.url)
	}
	if os.Getenv("LISTEN_DATABASE_URL") == "" {
		// What a LISTEN needs, for the examples of groups: straight to
		// PostgreSQL where $DATABASE_URL goes through a pooler.
		direct := os.Getenv(AdminURLEnv)
		if direct == "" {
			direct = os.Getenv("DATABASE_URL")
		}
		os.Setenv("LISTEN_DATABASE_URL", direct)
	}
	code := m.Run()
	shutdown()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: goroutines leaked by the tests:\n%v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
