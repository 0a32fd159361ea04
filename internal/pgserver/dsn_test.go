package pgserver

import (
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestDSNForms(t *testing.T) {
	t.Parallel()
	for _, base := range []string{
		"postgres://u:p@db.example:6543/d?sslmode=disable",
		"postgres://postgres@/postgres?host=%2Ftmp%2Fpgtest-1&port=40000",
		"host=db.example port=6543 user=u password='a b' dbname=d",
		"host=/tmp/pgtest-1 port=40000 user=postgres",
	} {
		dsn, err := WithParams(base, "search_path", "t_x_1", "application_name", "t_x_1")
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := pgconn.ParseConfig(dsn)
		if err != nil {
			t.Fatalf("%s: %v", dsn, err)
		}
		if cfg.RuntimeParams["search_path"] != "t_x_1" || cfg.RuntimeParams["application_name"] != "t_x_1" {
			t.Errorf("%s: runtime params %v", dsn, cfg.RuntimeParams)
		}
		via, err := WithTCPAddr(dsn, "127.0.0.1:5555")
		if err != nil {
			t.Fatal(err)
		}
		cfg2, err := pgconn.ParseConfig(via)
		if err != nil {
			t.Fatalf("%s: %v", via, err)
		}
		if cfg2.Host != "127.0.0.1" || cfg2.Port != 5555 || cfg2.User != cfg.User || cfg2.Password != cfg.Password ||
			cfg2.Database != cfg.Database || cfg2.RuntimeParams["search_path"] != "t_x_1" {
			t.Errorf("%s via proxy = %s: host %s port %d user %s db %s params %v",
				base, via, cfg2.Host, cfg2.Port, cfg2.User, cfg2.Database, cfg2.RuntimeParams)
		}
		as, err := WithUser(via, "t_x_1", "p w'")
		if err != nil {
			t.Fatal(err)
		}
		cfg3, err := pgconn.ParseConfig(as)
		if err != nil {
			t.Fatalf("%s: %v", as, err)
		}
		if cfg3.User != "t_x_1" || cfg3.Password != "p w'" || cfg3.Host != "127.0.0.1" || cfg3.Database != cfg.Database {
			t.Errorf("%s as t_x_1 = %s: user %s password %q host %s db %s", base, as, cfg3.User, cfg3.Password, cfg3.Host, cfg3.Database)
		}
	}
}
