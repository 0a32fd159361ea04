package pgtest_test

import (
	"database/sql/driver"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// mustConnector returns a database/sql connector for dsn.
func mustConnector(t *testing.T, dsn string) driver.Connector {
	t.Helper()
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	return stdlib.GetConnector(*cfg)
}
