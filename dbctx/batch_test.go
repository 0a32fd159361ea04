package dbctx

import (
	"context"
	"strings"
	"testing"
	"unsafe"

	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestBatchReuse: the mirror of pgconn.Batch matches the pgx this module
// is built with (if a pgx upgrade fails this, bring batchLayout up to
// date: until then every prefixed round trip makes its batch anew), and
// a session's round trip comes back empty, its buffers kept, but for one
// past maxKeptBatch. That the statements it then carries are right is
// what every test of a prefix checks (TestSettingsEveryPath,
// TestWriteResets, TestFirstUseAfterDirtyScope).
func TestBatchReuse(t *testing.T) {
	if !batchReuse {
		t.Fatal("batchLayout does not match pgconn.Batch")
	}
	var c session
	sd := &pgconn.StatementDescription{Name: "dbscope_1"}
	fill := func(param string) *batchLayout {
		rt := c.roundTrip()
		rt.b.ExecStatement(sd, [][]byte{[]byte(param)}, nil, []int16{1})
		rt.b.ExecParams("SELECT 1", nil, nil, nil, nil)
		b := (*batchLayout)(unsafe.Pointer(&rt.b))
		if len(b.buf) == 0 || len(b.statementDescriptions) != 2 || len(b.resultFormats) != 2 || b.statementDescriptions[0] != sd {
			t.Fatalf("the batch holds %d bytes, %d descriptions, %d formats", len(b.buf), len(b.statementDescriptions), len(b.resultFormats))
		}
		return b
	}
	b := fill("t1")
	buf, sds := unsafe.SliceData(b.buf), unsafe.SliceData(b.statementDescriptions)
	c.roundTrip()
	if len(b.buf) != 0 || len(b.statementDescriptions) != 0 || len(b.resultFormats) != 0 || b.err != nil {
		t.Fatalf("emptied, the batch holds %d bytes, %d descriptions, %d formats, err %v", len(b.buf), len(b.statementDescriptions), len(b.resultFormats), b.err)
	}
	if d := b.statementDescriptions[:1][0]; d != nil {
		t.Error("the emptied batch still references the last round trip's statement")
	}
	b = fill("t2")
	if unsafe.SliceData(b.buf) != buf || unsafe.SliceData(b.statementDescriptions) != sds {
		t.Error("the second round trip did not reuse the first's buffers")
	}
	b = fill(strings.Repeat("x", maxKeptBatch+1))
	c.roundTrip()
	if cap(b.buf) != 0 || cap(b.statementDescriptions) != 0 {
		t.Errorf("a batch of %d bytes was kept", maxKeptBatch+1)
	}
}

// TestBatchReuseBusy: where pgconn is still reading a round trip (rows
// left open: a caller's mistake, which pgconn refuses), the session's
// round trip is not emptied under that reader: a new one is returned.
func TestBatchReuseBusy(t *testing.T) {
	env := pgtest.New(t)
	ctx := context.Background()
	px, err := pgx.Connect(ctx, env.DSN()) // pgx: the DSN may carry its exec mode
	if err != nil {
		t.Fatal(err)
	}
	defer px.Close(ctx)
	pc := px.PgConn()
	c := session{pc: pc}
	rt := c.roundTrip()
	if rt != &c.rt {
		t.Fatal("an idle connection's round trip is not the session's")
	}
	rt.b.ExecParams("SELECT g FROM generate_series(1, 3) g", nil, nil, nil, nil)
	mrr := pc.ExecBatch(ctx, &rt.b)
	if !mrr.NextResult() {
		t.Fatal(mrr.Close())
	}
	rr := mrr.ResultReader()
	if other := c.roundTrip(); other == &c.rt {
		t.Fatal("the round trip under way was emptied for another")
	}
	n := 0
	for rr.NextRow() {
		n++
	}
	if _, err := rr.Close(); err != nil || n != 3 {
		t.Fatalf("the round trip under way read %d rows (%v)", n, err)
	}
	if err := mrr.Close(); err != nil {
		t.Fatal(err)
	}
	if c.roundTrip() != &c.rt {
		t.Error("once read, the session's round trip is not reused")
	}
}

// TestPgxCacheField: the field of pgx.Conn that holds its statement cache
// is found in the pgx this module is built with (if a pgx upgrade fails
// this, bring pgxCacheField up to date: until then the sweep's check
// counts dbscope's statements alone, and code that deallocated pgx's
// goes unseen), and it counts what pgx prepared.
func TestPgxCacheField(t *testing.T) {
	if pgxCacheField.Type == nil {
		t.Fatal("pgx.Conn has no statementCache field with a Len method")
	}
	if n := pgxCached(nil); n != 0 {
		t.Fatalf("nil conn: %d", n)
	}
	env := pgtest.New(t)
	ctx := context.Background()
	cfg, err := pgx.ParseConfig(env.DSN())
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeCacheStatement
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for i := range 3 {
		if _, err := conn.Exec(ctx, "SELECT $1::int + "+strings.Repeat("1", i+1), 1); err != nil {
			t.Fatal(err)
		}
	}
	if n := pgxCached(conn); n != 3 {
		t.Fatalf("pgxCached = %d, want 3", n)
	}
}
