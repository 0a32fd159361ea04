package groups_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

// bigMembers is what members of the tests of large messages take: room
// for a burst of them (MaxBytes bounds a member's backlog).
var bigMembers = &groups.MemberOptions{MaxBytes: 64 << 20}

// body returns size bytes that tell who sent them, which message it is,
// and its size: UTF-8 text with multi-byte runes, or binary (NULs and
// bytes that are not UTF-8), which the envelope carries in base64.
func body(sender, k, size int, binary bool) []byte {
	b := fmt.Appendf(make([]byte, 0, size), "%d:%d:%d:", sender, k, size)
	if binary {
		r := rand.New(rand.NewPCG(uint64(sender), uint64(k)))
		for len(b) < size {
			b = append(b, byte(r.Uint32()))
		}
		b[len(b)-1] = 0
		return b
	}
	for len(b)+2 <= size {
		b = append(b, "é"...)
	}
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

// members makes n members per instance of ins, in groups, closed at the
// test's end, and returns their recorders.
func members(t *testing.T, ins []*instance, n int, opts *groups.MemberOptions, gs ...string) []*recorder {
	t.Helper()
	var recs []*recorder
	for _, in := range ins {
		for range n {
			r := &recorder{}
			m := in.layer.NewMember(r.handle, opts)
			t.Cleanup(m.Close)
			for _, g := range gs {
				if err := m.Join(context.Background(), g); err != nil {
					t.Fatal(err)
				}
			}
			recs = append(recs, r)
		}
	}
	return recs
}

// rows counts the rows of the table of large messages in env's schema.
func rows(t *testing.T, env *pgtest.Env, where string) int {
	t.Helper()
	var n int
	q := "SELECT count(*) FROM " + env.Schema() + ".dbscope_groups_payloads " + where
	if err := env.Admin().QueryRowContext(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Messages of 8 KB, 64 KB and 1 MiB, text and binary, inside and outside
// dbctx.Atomic, reach every member on both instances as sent and in
// order; each instance's listener reads each body once, whatever its
// members; a rolled-back Atomic delivers nothing and leaves no row.
func TestLargePayloads(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ins := pgInstances(t, env, 2, &groups.PostgresOptions{MaxPayload: 2 << 20})
	ctx := context.Background()
	recs := members(t, ins, 2, bigMembers, "big")
	var sent [][]byte
	k := 0
	for _, size := range []int{8 << 10, 64 << 10, 1 << 20} {
		for _, binary := range []bool{false, true} {
			for _, inTx := range []bool{false, true} {
				data := body(0, k, size, binary)
				in := ins[k%2]
				k++
				send := func(ctx context.Context) error { return in.layer.Send(ctx, "big", data) }
				if inTx {
					err := in.pool.Do(ctx, func(ctx context.Context, _ *dbctx.Scope) error {
						return dbctx.Atomic(ctx, send)
					})
					if err != nil {
						t.Fatal(err)
					}
				} else if err := send(ctx); err != nil {
					t.Fatal(err)
				}
				sent = append(sent, data)
			}
		}
	}
	fail := errors.New("roll back")
	err := ins[0].pool.Do(ctx, func(ctx context.Context, _ *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if err := ins[0].layer.Send(ctx, "big", body(0, -1, 64<<10, false)); err != nil {
				return err
			}
			return fail
		})
	})
	if !errors.Is(err, fail) {
		t.Fatal(err)
	}
	// A marker after all: once it arrives, what came before has.
	if err := ins[1].layer.Send(ctx, "big", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker everywhere", func() bool {
		for _, r := range recs {
			if r.n.Load() < int64(len(sent))+1 {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		got := r.got()
		if len(got) != len(sent)+1 || string(got[len(sent)].Data) != "marker" {
			t.Fatalf("member %d got %d events, want %d then the marker", i, len(got), len(sent))
		}
		for j, e := range got[:len(sent)] {
			if e.Gap || e.Group != "big" || !bytes.Equal(e.Data, sent[j]) {
				t.Fatalf("member %d, event %d: %d bytes %.40q, want %d bytes %.40q", i, j, len(e.Data), e.Data, len(sent[j]), sent[j])
			}
		}
	}
	var stored int64
	for i, in := range ins {
		st, pg := in.layer.Stats(), in.pg.Stats()
		stored += pg.LargeSent
		if pg.LargeReceived != int64(len(sent)) || pg.LargeMissing != 0 || st.Gaps != 0 || st.Slow != 0 {
			t.Errorf("instance %d: want each body read once (%d), nothing missing: %+v, %+v", i, len(sent), st, pg)
		}
		if pg.LargeReceivedBytes <= int64(len(sent))*8<<10 {
			t.Errorf("instance %d: %d bytes read", i, pg.LargeReceivedBytes)
		}
	}
	if stored != int64(len(sent))+1 {
		t.Errorf("%d rows written, want %d (the rolled-back one counted)", stored, len(sent)+1)
	}
	if n := rows(t, env, ""); n != len(sent) {
		t.Errorf("%d rows in the table, want %d: the rolled-back one is not there", n, len(sent))
	}
}

// Two senders, one per instance, interleave small and large messages,
// one per transaction or three: every member gets each sender's in the
// order sent, each once and whole.
func TestLargeOrder(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ins := pgInstances(t, env, 2, nil)
	ctx := context.Background()
	recs := members(t, ins, 3, bigMembers, "mixed")
	// Across NOTIFY's limit, the envelope's ~50 bytes included.
	sizes := []int{10, 9000, 7900, 100, 70000, 7990, 8100, 20, 300000}
	const perSender = 45
	var wg sync.WaitGroup
	for s, in := range ins {
		wg.Go(func() {
			// Sender 0 sends each message on its own; sender 1 three in a
			// transaction.
			per := 1 + 2*s
			for k := 0; k < perSender; k += per {
				send := func(ctx context.Context) error {
					for j := k; j < k+per; j++ {
						if err := in.layer.Send(ctx, "mixed", body(s, j, sizes[(j+s)%len(sizes)], j%2 == 0)); err != nil {
							return err
						}
					}
					return nil
				}
				var err error
				if per == 1 {
					err = send(ctx)
				} else {
					err = in.pool.Do(ctx, func(ctx context.Context, _ *dbctx.Scope) error { return dbctx.Atomic(ctx, send) })
				}
				if err != nil {
					t.Errorf("send: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	dbtest.Eventually(t, "every message everywhere", func() bool {
		for _, r := range recs {
			if r.n.Load() < 2*perSender {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		next := []int{0, 0}
		for _, e := range r.got() {
			var s, k, size int
			if _, err := fmt.Sscanf(string(e.Data), "%d:%d:%d:", &s, &k, &size); err != nil || e.Gap {
				t.Fatalf("member %d got %+v", i, e)
			}
			if k != next[s] || !bytes.Equal(e.Data, body(s, k, size, k%2 == 0)) {
				t.Fatalf("member %d got %d:%d (%d bytes), want %d:%d: out of order, lost, twice or altered", i, s, k, len(e.Data), s, next[s])
			}
			next[s]++
		}
	}
	for _, in := range ins {
		if st := in.pg.Stats(); st.LargeReceived == 0 || st.LargeMissing != 0 {
			t.Errorf("want large messages read, none missing: %+v", st)
		}
	}
}

// The listeners delete the rows older than PayloadMaxAge at their
// sampling tick, and no younger one.
func TestLargeCleanup(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := pgInstances(t, env, 1, &groups.PostgresOptions{PayloadMaxAge: time.Minute})[0]
	ctx := context.Background()
	_, err := env.Admin().ExecContext(ctx, "INSERT INTO "+env.Schema()+".dbscope_groups_payloads (id, created, body) "+
		"VALUES ('00000000-0000-4000-8000-000000000000', now() - interval '61 seconds', 'old')")
	if err != nil {
		t.Fatal(err)
	}
	// To a group of no member: the row is written, and nobody reads it.
	if err := in.layer.Send(ctx, "nobody", body(0, 0, 10000, false)); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the old row deleted", func() bool { return rows(t, env, "WHERE body = 'old'") == 0 })
	if n := rows(t, env, ""); n != 1 {
		t.Fatalf("%d rows left, want the young one", n)
	}
}

// A large message whose transaction outlived PayloadMaxAge is delivered,
// not a gap: a row's age counts from its commit, for every instance. The
// receiver's listener is held (the proxy stalled) from before the commit
// until another instance's listener, with the same PayloadMaxAge and a
// short SampleEvery, has run its cleanup since. The row is deleted
// afterwards.
func TestLargeTransactionPastMaxAge(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the listener goes through a proxy of the test's, to the server: LISTEN needs a direct connection")
	env := pgtest.New(t)
	const maxAge = time.Second
	rx, cx := pgtest.NewProxy(t, env), pgtest.NewProxy(t, env)
	in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: rx.DSN(), SampleEvery: time.Hour, PayloadMaxAge: maxAge})[0]
	pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: cx.DSN(), SampleEvery: 10 * time.Millisecond, PayloadMaxAge: maxAge})
	recs := members(t, []*instance{in}, 1, bigMembers, "long")
	ctx := context.Background()
	data := body(0, 0, 20000, false)
	err := in.pool.Do(ctx, func(ctx context.Context, _ *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if err := in.layer.Send(ctx, "long", data); err != nil {
				return err
			}
			time.Sleep(maxAge * 3 / 2) // the row written longer than PayloadMaxAge ago at the commit
			rx.Stall()
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	// The other listener's round trips: a sample and a cleanup each tick.
	before := cx.Ready()
	dbtest.Eventually(t, "a cleanup since the commit", func() bool { return cx.Ready() >= before+4 })
	rx.Restore()
	dbtest.Eventually(t, "the message", func() bool { return recs[0].n.Load() == 1 })
	if e := recs[0].got()[0]; e.Gap || !bytes.Equal(e.Data, data) {
		t.Fatalf("got gap=%v, %d bytes: the row went before its reference was read", e.Gap, len(e.Data))
	}
	if st := in.pg.Stats(); st.LargeMissing != 0 || st.LargeReceived != 1 {
		t.Fatalf("want the body read, none missing: %+v", st)
	}
	// And the row goes, PayloadMaxAge after the commit.
	dbtest.Eventually(t, "the row deleted", func() bool { return rows(t, env, "") == 0 })
}

// A reference whose row is gone when the listener reads it (deleted in
// the sender's transaction, after the Send) is a gap for its group on
// every instance, counted and logged once; what follows arrives.
func TestLargeMissingRow(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	var ins []*instance
	var logs []*dbtest.Logs
	for range 2 {
		l, log := dbtest.NewLogs()
		ins = append(ins, pgInstances(t, env, 1, &groups.PostgresOptions{Logger: log})...)
		logs = append(logs, l)
	}
	ctx := context.Background()
	recs := members(t, ins, 1, nil, "gone", "other")
	err := ins[0].pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if err := ins[0].layer.Send(ctx, "gone", body(0, 0, 20000, false)); err != nil {
				return err
			}
			_, err := s.ExecContext(ctx, "DELETE FROM dbscope_groups_payloads")
			return err
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ins[1].layer.Send(ctx, "gone", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the gap and the message after it", func() bool {
		for _, r := range recs {
			if r.n.Load() < 2 {
				return false
			}
		}
		return true
	})
	for i, r := range recs {
		got := r.got()
		if len(got) != 2 || !got[0].Gap || got[0].Group != "gone" || string(got[1].Data) != "after" {
			t.Fatalf("member %d got %+v, want a gap of gone, then after", i, got)
		}
		st, pg := ins[i].layer.Stats(), ins[i].pg.Stats()
		if pg.LargeMissing != 1 || st.Gaps != 1 || pg.LargeReceived != 0 {
			t.Errorf("instance %d: want one missing row, one gap: %+v, %+v", i, st, pg)
		}
		if n := logs[i].Count(slog.LevelWarn, "groups: large messages were gone"); n != 1 {
			t.Errorf("instance %d: logged %d times, want once:\n%s", i, n, logs[i])
		}
	}
}

// An instance without the table (MaxPayload at NOTIFY's limit) that gets
// the reference of a large message from one with it gives the group a
// gap, counted in LargeMissing and logged once, at ERROR, saying what to
// set; what follows arrives.
func TestLargeWithoutTable(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	snd := pgInstances(t, env, 1, nil)[0]
	logs, log := dbtest.NewLogs()
	rcv := pgInstances(t, env, 1, &groups.PostgresOptions{MaxPayload: 7999, Logger: log})[0]
	recs := members(t, []*instance{rcv}, 1, nil, "mixed")
	ctx := context.Background()
	for k := range 2 {
		if err := snd.layer.Send(ctx, "mixed", body(0, k, 10000, false)); err != nil {
			t.Fatal(err)
		}
	}
	if err := snd.layer.Send(ctx, "mixed", []byte("small")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "three events", func() bool { return recs[0].n.Load() == 3 })
	if got := events(recs[0]); got != "gap,gap,small" {
		t.Fatalf("got %s, want a gap for each large message, then the small one", got)
	}
	if st := rcv.pg.Stats(); st.LargeMissing != 2 {
		t.Errorf("LargeMissing %d, want 2: %+v", st.LargeMissing, st)
	}
	if n := logs.Count(slog.LevelError, "groups: large messages arrive, and this instance has no table"); n != 1 {
		t.Errorf("logged %d times at ERROR, want once:\n%s", n, logs)
	}
}

// A reference whose id is not a UUID (NOTIFY asks for no privilege: any
// role may send one) is dropped as a message not made by the package: it
// failed the fetch of every reference of its batch (a gap for each, an
// ERROR that, logged once, then hid the table's real failures).
func TestLargeMalformedReference(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	in := pgInstances(t, env, 1, nil)[0]
	r := members(t, []*instance{in}, 1, bigMembers, "g")[0]
	ch := in.pg.ChannelOf("g")
	id := "6f1e3b0a-8c1d-4e7f-9a2b-3c4d5e6f7a8b"
	sent := body(0, 0, 9000, false)
	ctx := context.Background()
	tx, err := env.Admin().BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{"SELECT pg_notify($1, 'r|zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz|g')", []any{ch}},
		{"INSERT INTO " + env.Schema() + ".dbscope_groups_payloads (id, body) VALUES ($1, $2)", []any{id, "1|000000000000000000000001|g|t" + string(sent)}},
		{"SELECT pg_notify($1, 'r|' || $2 || '|g')", []any{ch, id}},
	} {
		if _, err := tx.ExecContext(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := in.layer.Send(ctx, "g", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker", func() bool {
		got := r.got()
		return len(got) > 0 && string(got[len(got)-1].Data) == "marker"
	})
	got := r.got()
	if len(got) != 2 || got[0].Gap || !bytes.Equal(got[0].Data, sent) {
		t.Fatalf("got %d events (first: gap %v), want the large message, then the marker", len(got), got[0].Gap)
	}
	if st := in.pg.Stats(); st.LargeMissing != 0 {
		t.Errorf("LargeMissing %d, want 0", st.LargeMissing)
	}
}

// A listener whose transactions are read-only (a role with
// default_transaction_read_only, as one that only reads may be given; a
// standby) may hold every privilege on the table and still cannot stamp
// and delete its rows: New fails with ErrPayloadTable. It started, and
// the table grew for good, with one ERROR logged.
func TestLargeReadOnlyListener(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "the listener goes straight to the server either way")
	env := pgtest.New(t)
	pgInstances(t, env, 1, nil) // makes the table
	dsn, err := pgserver.WithParams(env.DirectDSN(t), "default_transaction_read_only", "on")
	if err != nil {
		t.Fatal(err)
	}
	pool := dbctx.New(env.Open(t), nil)
	defer pool.Close()
	l, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: dsn, Namespace: env.Schema()}), nil)
	if err == nil {
		l.Close()
	}
	if !errors.Is(err, groups.ErrPayloadTable) || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("New with a read-only listener: %v, want ErrPayloadTable", err)
	}
	// Without the table, a read-only listener is fine.
	l, err = groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: dsn, Namespace: env.Schema(), MaxPayload: 7999}), nil)
	if err != nil {
		t.Fatalf("New with a read-only listener and no table: %v", err)
	}
	l.Close()
}

// A PayloadTable of the letters it takes that PostgreSQL reserves as a
// keyword (user, order) is made and used: Start failed with a syntax
// error.
func TestPayloadTableKeyword(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	for _, name := range []string{"user", "order"} {
		in := pgInstances(t, env, 1, &groups.PostgresOptions{PayloadTable: name})[0]
		r := members(t, []*instance{in}, 1, bigMembers, "g")[0]
		sent := body(0, 0, 20000, false)
		if err := in.layer.Send(context.Background(), "g", sent); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		dbtest.Eventually(t, "the message", func() bool { return r.n.Load() == 1 })
		if e := r.got()[0]; e.Gap || !bytes.Equal(e.Data, sent) {
			t.Errorf("%s: gap %v, %d bytes", name, e.Gap, len(e.Data))
		}
	}
}

// tenantPath is the search_path a unit of work declares in
// TestLargeUnderTenantSearchPath.
var tenantPath = dbctx.NewSetting("search_path")

// A unit of work whose declared search_path (a tenant's schema) is not
// the listener's sends large messages into the table the listener found,
// whatever its own search_path finds: without a table there, the Send
// failed with 42P01 (and failed the unit's transaction); with a tenant's
// copy of the table (migrations run per schema), every large message was
// a gap on every instance and its row stayed there for good.
func TestLargeUnderTenantSearchPath(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ins := pgInstances(t, env, 2, nil)
	ctx := context.Background()
	tenant := env.Schema() + "_tenant"
	if _, err := env.Admin().ExecContext(ctx, "CREATE SCHEMA "+tenant); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { env.Admin().ExecContext(ctx, "DROP SCHEMA "+tenant+" CASCADE") })
	recs := members(t, ins, 1, bigMembers, "g")
	tctx := tenantPath.With(ctx, tenant)
	send := func(k int) {
		t.Helper()
		err := ins[0].pool.Do(tctx, func(ctx context.Context, _ *dbctx.Scope) error {
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				return ins[0].layer.Send(ctx, "g", body(0, k, 20000, false))
			})
		})
		if err != nil {
			t.Fatalf("a large Send under the tenant's search_path: %v", err)
		}
	}
	send(0)
	if _, err := env.Admin().ExecContext(ctx, "CREATE TABLE "+tenant+".dbscope_groups_payloads (LIKE "+
		env.Schema()+".dbscope_groups_payloads INCLUDING ALL)"); err != nil {
		t.Fatal(err)
	}
	send(1)
	dbtest.Eventually(t, "two events per member", func() bool { return recs[0].n.Load() >= 2 && recs[1].n.Load() >= 2 })
	for i, r := range recs {
		for k, e := range r.got() {
			if e.Gap || !bytes.Equal(e.Data, body(0, k, 20000, false)) {
				t.Errorf("member %d, event %d: gap %v, %d bytes", i, k, e.Gap, len(e.Data))
			}
		}
	}
	var n int
	if err := env.Admin().QueryRowContext(ctx, "SELECT count(*) FROM "+tenant+".dbscope_groups_payloads").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d rows in the tenant's table, which no listener reads or cleans", n)
	}
	for _, in := range ins {
		if st := in.pg.Stats(); st.LargeMissing != 0 {
			t.Errorf("LargeMissing %d", st.LargeMissing)
		}
	}
}

// A role without CREATE on its schema, and no table: New fails with
// ErrPayloadTable. Without a table (MaxPayload at NOTIFY's limit) it
// starts and refuses what NOTIFY cannot carry. With the table made
// beforehand from NewPostgres's DDL, not granted: ErrPayloadTable again;
// granted: it carries large messages.
func TestLargeTableMissing(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	ctx := context.Background()
	adm := env.Admin()
	role, schema := env.Role()+"_app", env.Schema()
	for _, q := range []string{
		"CREATE ROLE " + role + " LOGIN PASSWORD 'app'",
		"GRANT USAGE ON SCHEMA " + schema + " TO " + role,
		"ALTER ROLE " + role + " SET search_path = " + schema,
	} {
		if _, err := adm.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { // after the pools and layers, closed below
		for _, q := range []string{"DROP OWNED BY " + role, "DROP ROLE " + role} {
			if _, err := adm.ExecContext(context.Background(), q); err != nil {
				t.Errorf("%s: %v", q, err)
			}
		}
	})
	as := func(dsn string) string {
		dsn, err := pgserver.WithUser(dsn, role, "app")
		if err != nil {
			t.Fatal(err)
		}
		return dsn
	}
	db, err := sql.Open("pgx", as(env.DSN()))
	if err != nil {
		t.Fatal(err)
	}
	pool := dbctx.New(db, &dbctx.Options{MaxWorkers: 2, TransactionPooling: pgtest.Pooled()})
	t.Cleanup(func() {
		pool.Close()
		db.Close()
	})
	start := func(maxPayload int) (*groups.Layer, error) {
		return groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{
			ListenDSN: as(env.DirectDSN(t)), Namespace: schema, MaxPayload: maxPayload,
		}), nil)
	}

	if l, err := start(0); !errors.Is(err, groups.ErrPayloadTable) || !strings.Contains(err.Error(), "permission denied") {
		if l != nil {
			l.Close()
		}
		t.Fatalf("New without the table, nor the right to create it: %v, want ErrPayloadTable", err)
	}

	l, err := start(7999)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Send(ctx, "g", bytes.Repeat([]byte("x"), 8000)); !errors.Is(err, groups.ErrTooLarge) {
		t.Errorf("8000 bytes with no table: %v, want ErrTooLarge", err)
	}
	l.Close()

	// NewPostgres's DDL, as an administrator runs it.
	ddl := `CREATE UNLOGGED TABLE dbscope_groups_payloads (
		id      uuid PRIMARY KEY,
		created timestamptz NOT NULL DEFAULT 'infinity',
		body    text NOT NULL
	);
	CREATE INDEX dbscope_groups_payloads_created ON dbscope_groups_payloads (created);
	GRANT INSERT, SELECT, UPDATE, DELETE ON dbscope_groups_payloads TO app;`
	for _, before := range []string{"TABLE ", "ON "} {
		ddl = strings.ReplaceAll(ddl, before+"dbscope_groups_payloads ", before+schema+".dbscope_groups_payloads ")
	}
	create, grant, _ := strings.Cut(ddl, "GRANT")
	if _, err := adm.ExecContext(ctx, create); err != nil {
		t.Fatal(err)
	}
	// Made, but not granted: the listener could not read it.
	if l, err := start(0); !errors.Is(err, groups.ErrPayloadTable) || !strings.Contains(err.Error(), "lacks SELECT, UPDATE, DELETE") {
		if l != nil {
			l.Close()
		}
		t.Fatalf("New with the table not granted: %v, want ErrPayloadTable naming what is lacking", err)
	}
	// With the grant of before UPDATE was needed: the error names it.
	if _, err := adm.ExecContext(ctx, "GRANT INSERT, SELECT, DELETE ON "+schema+".dbscope_groups_payloads TO "+role); err != nil {
		t.Fatal(err)
	}
	if l, err := start(0); !errors.Is(err, groups.ErrPayloadTable) || !strings.HasSuffix(err.Error(), "lacks UPDATE") {
		if l != nil {
			l.Close()
		}
		t.Fatalf("New with the old grant: %v, want ErrPayloadTable naming UPDATE", err)
	}
	if _, err := adm.ExecContext(ctx, "GRANT"+strings.ReplaceAll(grant, "TO app", "TO "+role)); err != nil {
		t.Fatal(err)
	}
	l, err = start(0)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	data := body(0, 0, 100000, false)
	if err := l.Send(ctx, "g", data); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the large message", func() bool { return r.n.Load() == 1 })
	if got := r.got(); !bytes.Equal(got[0].Data, data) {
		t.Fatalf("got %.40q", got[0].Data)
	}
}

// The size bound: a message past MaxPayload is refused with ErrTooLarge,
// writes nothing, and one at the bound goes.
func TestMaxPayload(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	const bound = 64 << 10
	ins := pgInstances(t, env, 1, &groups.PostgresOptions{MaxPayload: bound})
	l := ins[0].layer
	ctx := context.Background()
	if p := groups.NewPostgres(ins[0].pool, &groups.PostgresOptions{ListenDSN: "unused"}).MaxPayload(); p != 1<<20 {
		t.Errorf("the default MaxPayload is %d, want 1 MiB", p)
	}
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	// The envelope of a text body: "1|", a 24-digit id, "|g|t".
	const envelope = 2 + 24 + 3 + 1
	if err := l.Send(ctx, "g", bytes.Repeat([]byte("x"), bound-envelope+1)); !errors.Is(err, groups.ErrTooLarge) {
		t.Fatalf("one byte past MaxPayload: %v, want ErrTooLarge", err)
	}
	at := bytes.Repeat([]byte("y"), bound-envelope)
	if err := l.Send(ctx, "g", at); err != nil {
		t.Fatalf("at MaxPayload: %v", err)
	}
	dbtest.Eventually(t, "the message at the bound", func() bool { return r.n.Load() == 1 })
	if got := r.got(); !bytes.Equal(got[0].Data, at) {
		t.Fatalf("got %d bytes", len(got[0].Data))
	}
	if n := rows(t, env, ""); n != 1 {
		t.Fatalf("%d rows, want the one sent", n)
	}
}

// MaxBytes bounds a member's backlog, not one event: an event larger
// than MaxBytes is taken into an empty queue; one more behind it, while
// the callback holds the first, makes the member slow.
func TestMaxBytesBacklog(t *testing.T) {
	t.Parallel()
	l, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	block := make(chan struct{})
	var got, told atomic.Int64
	m := l.NewMember(func(groups.Event) { got.Add(1); <-block }, &groups.MemberOptions{
		MaxBytes: 1000,
		OnSlow:   func() { told.Add(1) },
	})
	defer m.Close()
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("x"), 5000)
	for range 2 { // the first to the callback, the second into the empty queue
		if err := l.Send(ctx, "g", big); err != nil {
			t.Fatal(err)
		}
		dbtest.Eventually(t, "the callback to hold the first", func() bool { return got.Load() == 1 })
	}
	if st := l.Stats(); st.Slow != 0 {
		t.Fatalf("a member with an empty queue dropped for one large event: %+v", st)
	}
	if err := l.Send(ctx, "g", big); err != nil { // behind the second: past MaxBytes
		t.Fatal(err)
	}
	close(block)
	dbtest.Eventually(t, "the member told it is slow", func() bool { return told.Load() == 1 })
	if st := l.Stats(); st.Slow != 1 {
		t.Fatalf("want one slow member: %+v", st)
	}
}

// NewPostgres refuses, at construction, a table name it would have to
// quote and a MaxPayload PostgreSQL cannot store.
func TestPostgresOptionsPanic(t *testing.T) {
	t.Parallel()
	db, err := sql.Open("pgx", "postgres://unused")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pool := dbctx.New(db, nil)
	defer pool.Close()
	for _, o := range []groups.PostgresOptions{
		{PayloadTable: "Payloads"},
		{PayloadTable: "a.b.c"},
		{PayloadTable: "1st"},
		{PayloadTable: "x; DROP TABLE y"},
		{PayloadTable: strings.Repeat("x", 56)},
		{MaxPayload: -1},
		{MaxPayload: 1 << 30},
		{PayloadMaxAge: -time.Second},
	} {
		o.ListenDSN = "unused"
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("NewPostgres(%+v) did not panic", o)
				}
			}()
			groups.NewPostgres(pool, &o)
		}()
	}
	for _, name := range []string{"payloads", "app.group_payloads", "_x9"} {
		groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: "unused", PayloadTable: name})
	}
}

// Whoever may NOTIFY a group's channel (any role of the database) can
// send what the package did not make: each is dropped, and the warning
// of them comes at most once a minute, with how many were dropped, not
// once each (a role sending thousands would flood the log). The message
// sent after them arrives.
func TestForeignMessagesWarnedOnce(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	p := dbctx.New(env.Open(t), &dbctx.Options{MaxWorkers: 2, TransactionPooling: pgtest.Pooled()})
	e := groups.NewPostgres(p, &groups.PostgresOptions{ListenDSN: env.DirectDSN(t), Namespace: env.Schema(), SampleEvery: 100 * time.Millisecond})
	logs, logger := dbtest.NewLogs()
	l, err := groups.New(e, &groups.Options{Logger: logger})
	if err != nil {
		p.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		l.Close()
		dbtest.Clean(t, p, env)
		p.Close()
	})
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	ctx := context.Background()
	if err := m.Join(ctx, "g"); err != nil {
		t.Fatal(err)
	}
	const forged = 200
	if _, err := env.Admin().ExecContext(ctx, "SELECT pg_notify($1, CASE WHEN n % 2 = 0 THEN 'hello ' || n ELSE 'r|zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz|g' END) FROM generate_series(1, $2) AS n",
		e.ChannelOf("g"), forged); err != nil {
		t.Fatal(err)
	}
	if err := l.Send(ctx, "g", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker", func() bool { return r.n.Load() >= 1 })
	if got := r.got(); len(got) != 1 || string(got[0].Data) != "marker" {
		t.Errorf("got %+v, want the marker alone", got)
	}
	if n := logs.Count(slog.LevelWarn, "groups: dropped a message not made by this package"); n != 1 {
		t.Errorf("%d warnings of the %d dropped, want 1", n, forged)
	}
}

// Where the listener cannot read its table (dropped under it), each large
// message is a gap for its group, counted; the failure is logged once, at
// ERROR, and not again for each batch as rows "gone from the table" (they
// were never read: it flooded the log with that); once a read succeeds,
// the next failure is logged again (it was never logged again).
func TestLargeUnreadableLoggedOnce(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	snd := pgInstances(t, env, 1, nil)[0]
	logs, log := dbtest.NewLogs()
	rcv := pgInstances(t, env, 1, &groups.PostgresOptions{Logger: log, PayloadTable: "rcv_payloads"})[0]
	r := members(t, []*instance{rcv}, 1, nil, "g")[0]
	ctx := context.Background()
	table := pgx.Identifier{env.Schema(), "rcv_payloads"}.Sanitize()
	admin := func(q string) {
		t.Helper()
		if _, err := env.Admin().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	// gap sends a large message (to the sender's table, which the
	// receiver does not read) and reports whether the member got a gap.
	gap := func(k int) bool {
		t.Helper()
		n := r.n.Load()
		if err := snd.layer.Send(ctx, "g", body(0, k, 20000, false)); err != nil {
			t.Fatal(err)
		}
		dbtest.Eventually(t, "the event", func() bool { return r.n.Load() > n })
		got := r.got()
		return got[len(got)-1].Gap
	}
	const failed, gone = "groups: reading large messages from the table failed", "groups: large messages were gone"
	admin("DROP TABLE " + table)
	for k := range 3 { // three batches
		if !gap(k) {
			t.Fatalf("message %d: no gap", k)
		}
	}
	if n, g, pg := logs.Count(slog.LevelError, failed), logs.Count(slog.LevelWarn, gone), rcv.pg.Stats(); n != 1 || g != 0 || pg.LargeMissing != 3 {
		t.Fatalf("%d records at ERROR, %d of rows gone, %d missing; want 1, 0, 3:\n%s", n, g, pg.LargeMissing, logs)
	}
	// Readable again: the row is not there, and is gone.
	admin("CREATE UNLOGGED TABLE " + table + " (LIKE " + pgx.Identifier{env.Schema(), "dbscope_groups_payloads"}.Sanitize() + ")")
	if !gap(3) || logs.Count(slog.LevelWarn, gone) != 1 {
		t.Fatalf("a row missing from a readable table: want a gap, logged as gone:\n%s", logs)
	}
	admin("DROP TABLE " + table)
	if !gap(4) {
		t.Fatal("no gap")
	}
	if n := logs.Count(slog.LevelError, failed); n != 2 {
		t.Fatalf("%d records at ERROR after a second failure, want 2:\n%s", n, logs)
	}
}

// The cleanup of a table it cannot write logs its failure once, and again
// after a cleanup succeeded (it was logged once for the engine's life).
func TestLargeCleanupFailureLoggedAgain(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	logs, log := dbtest.NewLogs()
	pgInstances(t, env, 1, &groups.PostgresOptions{Logger: log, PayloadTable: "cleaned_payloads"})
	table := pgx.Identifier{env.Schema(), "cleaned_payloads"}.Sanitize()
	admin := func(q string) {
		t.Helper()
		if _, err := env.Admin().Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	const failed = "groups: deleting old large messages from the table failed"
	admin("ALTER TABLE " + table + " RENAME TO elsewhere")
	dbtest.Eventually(t, "the failure logged", func() bool { return logs.Count(slog.LevelError, failed) == 1 })
	admin("ALTER TABLE " + pgx.Identifier{env.Schema(), "elsewhere"}.Sanitize() + " RENAME TO cleaned_payloads")
	// A row committed: the next cleanup that succeeds stamps it.
	admin("INSERT INTO " + table + " (id, created, body) VALUES (gen_random_uuid(), 'infinity', '')")
	dbtest.Eventually(t, "a cleanup", func() bool {
		var n int
		if err := env.Admin().QueryRow("SELECT count(*) FROM " + table + " WHERE created = 'infinity'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	admin("ALTER TABLE " + table + " RENAME TO elsewhere")
	t.Cleanup(func() {
		admin("ALTER TABLE " + pgx.Identifier{env.Schema(), "elsewhere"}.Sanitize() + " RENAME TO cleaned_payloads")
	})
	dbtest.Eventually(t, "the second failure logged", func() bool { return logs.Count(slog.LevelError, failed) == 2 })
}
