package dbctx

import (
	"context"
	"errors"
	"testing"

	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/jackc/pgx/v5/pgconn"
)

// PostgreSQL is the judge of kindAlone: a statement sent after
// set_config(…, true) before the same Sync, and followed by a read of that
// setting, either is refused as inside a transaction block or ends the
// transaction (the setting is gone after it). Every such statement must be
// kindAlone; and ordinary statements, which keep the transaction, must not
// be. In a throwaway cluster: these create databases and tablespaces and
// ALTER SYSTEM.
func TestAloneOracle(t *testing.T) {
	ctx := context.Background()
	srv, err := pgserver.StartCluster(ctx, t.Logf, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	url := srv.URL
	pc, err := pgconn.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx)
	for _, q := range []string{
		"CREATE TABLE t (x int)",
		"CREATE INDEX ti ON t (x)",
		"CREATE INDEX ti_drop ON t (x)",
		"CREATE TABLE p (x int) PARTITION BY LIST (x)",
		"CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)",
		"CREATE PROCEDURE commits() LANGUAGE plpgsql AS $$BEGIN COMMIT; END$$",
		"CREATE DATABASE doomed",
		"ALTER SYSTEM SET allow_in_place_tablespaces = on",
		"SELECT pg_reload_conf()",
	} {
		if _, err := pc.Exec(ctx, q).ReadAll(); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// keeps runs q between a transaction-local setting and its read, in
	// one Sync, and reports whether the transaction survived it.
	keeps := func(q string) (bool, error) {
		b := &pgconn.Batch{}
		b.ExecParams("SELECT set_config('app.x', 'unit', true)", nil, nil, nil, nil)
		b.ExecParams(q, nil, nil, nil, nil)
		b.ExecParams("SELECT current_setting('app.x', true)", nil, nil, nil, nil)
		res, err := pc.ExecBatch(ctx, b).ReadAll()
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "25001": // active_sql_transaction
			return false, nil
		case err != nil:
			return false, err
		}
		return len(res) == 3 && len(res[2].Rows) == 1 && string(res[2].Rows[0][0]) == "unit", nil
	}
	for _, q := range []string{
		"VACUUM t",
		"VACUUM (ANALYZE) t",
		"CLUSTER",
		"REINDEX TABLE CONCURRENTLY t",
		"REINDEX TABLE p",
		"REINDEX SCHEMA public",
		"CREATE INDEX CONCURRENTLY ti2 ON t (x)",
		"DROP INDEX CONCURRENTLY ti_drop",
		"CREATE DATABASE d",
		"DROP DATABASE doomed",
		"CREATE TABLESPACE ts LOCATION ''",
		"ALTER SYSTEM SET work_mem = '5MB'",
		"DISCARD ALL",
		"ALTER TABLE p DETACH PARTITION p1 CONCURRENTLY",
		"DO $$BEGIN COMMIT; END$$",
		"CALL commits()",
		"COMMIT",
		"ROLLBACK",
	} {
		kept, err := keeps(q)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		if kept {
			t.Errorf("%s: PostgreSQL kept the transaction: the test does not test it", q)
		}
		if classify(q)&kindAlone == 0 {
			t.Errorf("%s: PostgreSQL ends or refuses the transaction, but it is classified %s", q, kindString(classify(q)))
		}
	}
	for _, q := range []string{
		"SELECT 1",
		"INSERT INTO t VALUES (1)",
		"UPDATE t SET x = 2",
		"SET work_mem = '5MB'",
		"SET LOCAL work_mem = '5MB'",
		"CREATE TABLE u (x int)",
		"ALTER TABLE t ADD COLUMN y int",
		"CREATE INDEX ti3 ON t (x)",
		"ANALYZE t",
		"EXPLAIN ANALYZE SELECT 1",
		"DISCARD TEMP",
		"ALTER DATABASE postgres SET work_mem = '5MB'",
		"PREPARE transaction AS SELECT 1",
		"DECLARE hold CURSOR WITH HOLD FOR SELECT 1",
	} {
		kept, err := keeps(q)
		if err != nil {
			t.Errorf("%s: %v", q, err)
			continue
		}
		if !kept {
			t.Errorf("%s: PostgreSQL ended or refused the transaction: the test does not test it", q)
		}
		if classify(q)&kindAlone != 0 {
			t.Errorf("%s: classified %s, but PostgreSQL runs it in a transaction", q, kindString(classify(q)))
		}
	}
}
