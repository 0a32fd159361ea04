package groups_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/internal/pgtest"
)

// proxied starts an instance whose listener goes through a proxy of its
// own, and another to send from: the proxy holds or cuts the first's
// listener only. known groups have a member on the first (closed at the
// test's end): LISTENing them again after a reconnection takes one
// round trip each, through the proxy.
func proxied(t *testing.T, known int) (in, snd *instance, px *pgtest.Proxy) {
	t.Helper()
	pgtest.SkipPooled(t, "the listener goes through a proxy of the test's, to the server: LISTEN needs a direct connection")
	env := pgtest.New(t)
	px = pgtest.NewProxy(t, env)
	in = pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: px.DSN(), SampleEvery: time.Hour, MaxPayload: 7999})[0]
	snd = pgInstances(t, env, 1, &groups.PostgresOptions{MaxPayload: 7999})[0]
	m := in.layer.NewMember(func(groups.Event) {}, nil)
	t.Cleanup(m.Close)
	for i := range known {
		if err := m.Join(context.Background(), fmt.Sprint("known.", i)); err != nil {
			t.Fatal(err)
		}
	}
	return in, snd, px
}

// midReListen lets the proxy's connections through again after a cut
// and waits until the listener has reconnected and is LISTENing its
// known channels again; then it calls hold (px.Stall or px.Cut), and
// checks the re-LISTEN had not ended: before is px.Ready() while down.
func midReListen(t *testing.T, px *pgtest.Proxy, before int64, known int, hold func()) {
	t.Helper()
	px.Restore()
	// The handshake's ReadyForQuery, then one per LISTEN.
	dbtest.Eventually(t, "the re-LISTEN under way", func() bool { return px.Ready() > before+2 })
	hold()
	if n := px.Ready() - before - 1; n >= int64(known) {
		t.Fatalf("the %d channels were LISTENed again before the proxy held the listener", n)
	}
}

// events returns what r got, a gap written "gap".
func events(r *recorder) string {
	var out []string
	for _, e := range r.got() {
		if e.Gap {
			out = append(out, "gap")
		} else {
			out = append(out, string(e.Data))
		}
	}
	return strings.Join(out, ",")
}

// Joins of new groups made while the listener LISTENs again after a
// reconnection return at once (the engine is down), and their channels
// are LISTENed before the gap that covers the outage: a message sent
// once a member has its gap reaches it. The listener is held (the proxy
// stalled) mid re-LISTEN while members join, and again from the moment
// the member has its gap until the message is sent.
func TestJoinWhileReconnectingListenedBeforeGap(t *testing.T) {
	t.Parallel()
	const known = 500
	in, snd, px := proxied(t, known)
	ctx := context.Background()
	px.Cut()
	dbtest.Eventually(t, "the listener down", func() bool { return in.layer.Ready() != nil })
	midReListen(t, px, px.Ready(), known, px.Stall)
	fill := in.layer.NewMember(func(groups.Event) {}, nil)
	defer fill.Close()
	for i := range 100 {
		if err := fill.Join(ctx, fmt.Sprint("fill.", i)); err != nil {
			t.Fatal(err)
		}
	}
	held := make(chan struct{})
	var once sync.Once
	r := &recorder{}
	m := in.layer.NewMember(func(e groups.Event) {
		if e.Gap && e.Group == "late" {
			once.Do(func() {
				px.Stall()
				close(held)
			})
		}
		r.handle(e)
	}, nil)
	defer m.Close()
	if err := m.Join(ctx, "late"); err != nil {
		t.Fatal(err)
	}
	if in.layer.Ready() == nil {
		t.Fatal("the engine says it is up while its listener is held")
	}
	px.Restore()
	dbtest.Eventually(t, "the member's gap", func() bool {
		select {
		case <-held:
			return true
		default:
			return false
		}
	})
	if err := snd.layer.Send(ctx, "late", []byte("after the gap")); err != nil {
		t.Fatal(err)
	}
	px.Restore()
	if err := snd.layer.Send(ctx, "late", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker", func() bool { return strings.HasSuffix(events(r), "marker") })
	if got := events(r); got != "gap,after the gap,marker" {
		t.Fatalf("got %s, want the gap, then every message sent after it", got)
	}
}

// A Join waiting for its LISTEN when the listener's connection breaks
// returns, even where the reconnection's own LISTENs fail too, and its
// group's messages reach the member once the listener is back (after a
// gap); the layer's subscription lock is free meanwhile. The listener is
// held sending an UNLISTEN while the Join's LISTEN queues behind it, then
// cut, then cut again mid re-LISTEN.
func TestJoinAnsweredAcrossFailedReconnection(t *testing.T) {
	t.Parallel()
	const known = 500
	in, snd, px := proxied(t, known)
	ctx := context.Background()
	b := in.layer.NewMember(func(groups.Event) {}, nil)
	if err := b.Join(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	px.Stall()
	b.Close() // its UNLISTEN: the listener sends it, and waits
	dbtest.Eventually(t, "the UNLISTEN taken", func() bool { return in.pg.Queued() == 0 })
	r := &recorder{}
	m := in.layer.NewMember(r.handle, nil)
	defer m.Close()
	joined := make(chan error, 1)
	go func() { joined <- m.Join(ctx, "g") }()
	dbtest.Eventually(t, "the Join's LISTEN queued", func() bool { return in.pg.Queued() == 1 })
	px.Cut()
	dbtest.Eventually(t, "the listener down", func() bool { return in.layer.Ready() != nil })
	midReListen(t, px, px.Ready(), known, px.Cut)
	px.Restore()
	if dbtest.Wait(10*time.Second, func() bool { return len(joined) == 1 }) != nil {
		in.layer.Close() // frees the Join (ErrClosed)
		t.Fatal("the Join did not return")
	}
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the listener back", func() bool { return in.layer.Ready() == nil })
	if err := snd.layer.Send(ctx, "g", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message", func() bool { return strings.HasSuffix(events(r), "after") })
	if got := events(r); got != "gap,after" {
		t.Fatalf("got %s, want a gap, then the message", got)
	}
	other := in.layer.NewMember(func(groups.Event) {}, nil)
	dbtest.NoHang(t, "a Join and a last member's Close", func() {
		if err := other.Join(ctx, "other"); err != nil {
			t.Error(err)
		}
		other.Close()
	})
}

// The listener's network goes silent (no RST): the listener finds out
// when its statement times out (10s). A Join whose LISTEN queued behind
// that statement returns then; from then on, a Join of a new group and
// the Close of a group's last member return at once, as whenever the
// engine is down. Once the network is back, the members get a gap, then
// what is sent.
func TestJoinDuringSilentOutage(t *testing.T) {
	t.Parallel()
	in, snd, px := proxied(t, 0)
	ctx := context.Background()
	var last [2]*groups.Member
	for i := range last {
		last[i] = in.layer.NewMember(func(groups.Event) {}, nil)
		if err := last[i].Join(ctx, fmt.Sprint("last.", i)); err != nil {
			t.Fatal(err)
		}
	}
	px.Stall()
	last[0].Close() // its UNLISTEN: the listener sends it, and waits
	dbtest.Eventually(t, "the UNLISTEN taken", func() bool { return in.pg.Queued() == 0 })
	r1, r2 := &recorder{}, &recorder{}
	m1, m2 := in.layer.NewMember(r1.handle, nil), in.layer.NewMember(r2.handle, nil)
	defer m1.Close()
	defer m2.Close()
	joined := make(chan error, 1)
	go func() { joined <- m1.Join(ctx, "first") }()
	dbtest.Eventually(t, "the Join's LISTEN queued", func() bool { return in.pg.Queued() == 1 })
	if dbtest.Wait(30*time.Second, func() bool { return in.layer.Ready() != nil }) != nil {
		t.Fatal("the listener never found its connection broken")
	}
	// within fails the test unless f returns within 5s (at once, on the
	// fix), freeing it first (the network back, the layer closed).
	within := func(what string, f func()) {
		t.Helper()
		done := make(chan struct{})
		go func() {
			defer close(done)
			f()
		}()
		if dbtest.Wait(5*time.Second, func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		}) != nil {
			px.Restore()
			in.layer.Close()
			<-done
			t.Fatalf("%s waited for the outage to end", what)
		}
	}
	within("the Join waiting for its LISTEN", func() {
		if err := <-joined; err != nil {
			t.Error(err)
		}
	})
	within("a Join while down", func() {
		if err := m2.Join(ctx, "second"); err != nil {
			t.Error(err)
		}
	})
	within("the Close of a group's last member", last[1].Close)
	px.Restore()
	dbtest.Eventually(t, "the listener back", func() bool { return in.layer.Ready() == nil })
	// The gap comes once the LISTENs of the Joins made while down have
	// run: a message sent before could precede them (and be covered by
	// the gap, not delivered).
	dbtest.Eventually(t, "the gaps", func() bool { return events(r1) == "gap" && events(r2) == "gap" })
	for _, g := range []string{"first", "second"} {
		if err := snd.layer.Send(ctx, g, []byte("after")); err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range []*recorder{r1, r2} {
		dbtest.Eventually(t, "the message", func() bool { return strings.HasSuffix(events(r), "after") })
		if got := events(r); got != "gap,after" {
			t.Fatalf("member %d got %s, want a gap, then the message", i+1, got)
		}
	}
}

// Close is safe in every state of the engine: never started, after a
// Start that failed (ListenDSN unparsable, the listener unreachable),
// after a Start that succeeded, and again.
func TestPostgresCloseInAnyState(t *testing.T) {
	t.Parallel()
	env := pgtest.New(t)
	pool := dbctx.New(env.Open(t), nil)
	defer pool.Close()
	for _, c := range []struct {
		name  string
		dsn   string
		start bool
	}{
		{"never started", env.DirectDSN(t), false},
		{"ListenDSN unparsable", "port=notaport", true},
		{"listener unreachable", env.DSNVia(pgtest.ClosedAddr(t)), true},
		{"started", env.DirectDSN(t), true},
	} {
		e := groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: c.dsn, Namespace: env.Schema()})
		if c.start {
			_, err := groups.New(e, nil)
			if (err == nil) != (c.name == "started") {
				t.Fatalf("%s: New: %v", c.name, err)
			}
		}
		for range 2 {
			closed := make(chan struct{})
			go func() {
				defer close(closed)
				e.Close()
			}()
			select {
			case <-closed:
			case <-time.After(10 * time.Second):
				t.Fatalf("%s: Close hangs", c.name)
			}
		}
	}
}

// A listener whose ListenDSN goes through PgBouncer in transaction mode
// would LISTEN on whatever server connection PgBouncer lends it, and get
// nothing: New fails with ErrPooledListener. A listener that reconnects
// through one (its address now leads to PgBouncer) is refused too: down,
// Ready says why, logged once at ERROR; it comes back once the address
// leads to PostgreSQL again.
func TestListenerThroughPooler(t *testing.T) {
	t.Parallel()
	pgtest.SkipPooled(t, "reaches PostgreSQL through a proxy of its own, straight")
	env := pgtest.New(t)
	b := pgtest.StartPgBouncer(t, nil)
	pool := dbctx.New(env.Open(t), &dbctx.Options{TransactionPooling: pgtest.Pooled()})
	defer pool.Close()
	l, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: b.DSN(env), Namespace: env.Schema()}), nil)
	if err == nil {
		l.Close()
		t.Fatal("New took a listener through PgBouncer")
	}
	if !errors.Is(err, groups.ErrPooledListener) {
		t.Fatalf("New: %v, want ErrPooledListener", err)
	}

	px := pgtest.NewProxy(t, env)
	sw := newSwitch(t, px.Addr())
	logs, log := dbtest.NewLogs()
	dsn, err := pgserver.WithParams(env.DSNVia(sw.addr()), "sslmode", "disable")
	if err != nil {
		t.Fatal(err)
	}
	in := pgInstances(t, env, 1, &groups.PostgresOptions{ListenDSN: dsn, MaxPayload: 7999, Logger: log})[0]
	recs := members(t, []*instance{in}, 1, nil, "g")
	sw.to(b.Addr())
	px.Cut()
	dbtest.Eventually(t, "the listener refused through PgBouncer", func() bool {
		return errors.Is(in.layer.Ready(), groups.ErrPooledListener)
	})
	if n := logs.Count(slog.LevelError, "groups: the PostgreSQL listener reconnected through a pooler"); n != 1 {
		t.Fatalf("logged %d times at ERROR, want once:\n%s", n, logs)
	}
	sw.to(px.Addr())
	px.Restore()
	dbtest.Eventually(t, "the listener back", func() bool { return in.layer.Ready() == nil })
	if err := in.layer.Send(context.Background(), "g", []byte("after")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the message after", func() bool { return strings.HasSuffix(events(recs[0]), "after") })
	if got := events(recs[0]); got != "gap,after" {
		t.Fatalf("got %s, want the gap of the outage, then the message", got)
	}
}

// switcher forwards the connections it accepts to a TCP address that
// the test changes: those made from then on go there.
type switcher struct {
	ln     net.Listener
	mu     sync.Mutex
	target string
	conns  []net.Conn
	closed bool
	wg     sync.WaitGroup
}

// newSwitch starts a switcher to target on 127.0.0.1:0, closed with its
// connections and goroutines at the test's end.
func newSwitch(t *testing.T, target string) *switcher {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &switcher{ln: ln, target: target}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		s.closed = true
		for _, c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *switcher) addr() string { return s.ln.Addr().String() }

func (s *switcher) to(target string) {
	s.mu.Lock()
	s.target = target
	s.mu.Unlock()
}

func (s *switcher) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		target := s.target
		s.mu.Unlock()
		d, err := net.Dial("tcp", target)
		if err != nil {
			c.Close()
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			d.Close()
			return
		}
		s.conns = append(s.conns, c, d)
		s.mu.Unlock()
		for _, p := range [][2]net.Conn{{c, d}, {d, c}} {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				io.Copy(p[0], p[1])
				p[0].Close()
				p[1].Close()
			}()
		}
	}
}

// A database whose encoding is EUC_TW, where a CJK character takes 2 or 4
// bytes (3 in UTF-8): PostgreSQL measures NOTIFY's 7,999 bytes in that
// encoding. Text messages whose envelopes are up to 7,999 bytes of UTF-8
// but longer in EUC_TW go through the table (with MaxPayload at 7,999,
// no table: ErrTooLarge); those that fit there, and ASCII, by NOTIFY;
// all arrive whole and in order.
func TestServerEncodingNotifyLimit(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dsn, pool := encodedDatabase(t, "EUC_TW")
	layer := func(maxPayload int) (*groups.Layer, *groups.Postgres) {
		e := groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: dsn, MaxPayload: maxPayload, PayloadTable: "public.dbscope_groups_payloads"})
		l, err := groups.New(e, nil)
		if err != nil {
			t.Fatal(err)
		}
		return l, e
	}
	l, e := layer(0)
	defer l.Close()
	small, _ := layer(7999)
	defer small.Close()
	r := &recorder{}
	m := l.NewMember(r.handle, nil)
	defer m.Close()
	if err := m.Join(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	// text returns the body of an envelope of n bytes to group b ("1|",
	// a 24-digit id, "|b|t"): runes of r, 'x's in front to make up.
	text := func(n int, r string) []byte {
		n -= 2 + 24 + 3 + 1
		b := bytes.Repeat([]byte(r), n/len(r))
		return append(bytes.Repeat([]byte("x"), n-len(b)), b...)
	}
	// A body of text other than ASCII goes in base64 in a database whose
	// encoding is not UTF-8 (乂 takes 4 bytes in EUC_TW, 中 2): its
	// envelope is 4/3 of the UTF-8 one.
	var sent [][]byte
	for _, c := range []struct {
		envelope int // in UTF-8, as text
		r        string
		table    bool
	}{
		{7999, "x", false},
		{3000, "乂", false},
		{6000, "中", false},
		{7000, "乂", true},
		{7999, "中", true},
		{8000, "x", true},
	} {
		before := e.Stats().LargeSent
		d := text(c.envelope, c.r)
		if err := l.Send(ctx, "b", d); err != nil {
			t.Fatalf("an envelope of %d bytes of %s: %v", c.envelope, c.r, err)
		}
		sent = append(sent, d)
		if table := e.Stats().LargeSent > before; table != c.table {
			t.Errorf("an envelope of %d bytes of %s: through the table %v, want %v", c.envelope, c.r, table, c.table)
		}
		err := small.Send(ctx, "b", d)
		switch {
		case c.envelope > 7999 || c.table:
			if !errors.Is(err, groups.ErrTooLarge) {
				t.Errorf("without a table, an envelope of %d bytes of %s: %v, want ErrTooLarge", c.envelope, c.r, err)
			}
		case err != nil:
			t.Errorf("without a table, an envelope of %d bytes of %s: %v", c.envelope, c.r, err)
		default:
			sent = append(sent, d)
		}
	}
	if err := l.Send(ctx, "b", []byte("marker")); err != nil {
		t.Fatal(err)
	}
	dbtest.Eventually(t, "the marker", func() bool { return r.n.Load() == int64(len(sent))+1 })
	got := r.got()
	for i, d := range sent {
		if got[i].Gap || !bytes.Equal(got[i].Data, d) {
			t.Fatalf("event %d: gap %v, %d bytes %.20q; want %d bytes %.20q", i, got[i].Gap, len(got[i].Data), got[i].Data, len(d), d)
		}
	}
}

// In a database whose encoding cannot hold every character (LATIN1 has
// none for 中 or an emoji, EUC_JP none for an emoji), text bodies go in
// base64: every one arrives as sent, through NOTIFY and the table, and a
// Send inside the user's Atomic leaves the transaction usable. They
// failed with 22P05 and aborted the user's transaction.
func TestServerEncodingCannotHoldText(t *testing.T) {
	t.Parallel()
	for _, enc := range []string{"LATIN1", "EUC_JP"} {
		t.Run(enc, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			dsn, pool := encodedDatabase(t, enc)
			l, err := groups.New(groups.NewPostgres(pool, &groups.PostgresOptions{ListenDSN: dsn, PayloadTable: "public.dbscope_groups_payloads"}), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			r := &recorder{}
			m := l.NewMember(r.handle, nil)
			defer m.Close()
			if err := m.Join(ctx, "b"); err != nil {
				t.Fatal(err)
			}
			sent := []string{"café", "中文", "emoji 🎉", strings.Repeat("中", 5000)}
			for _, d := range sent {
				if err := l.Send(ctx, "b", []byte(d)); err != nil {
					t.Fatalf("Send of %.12q: %v", d, err)
				}
			}
			if err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					if err := l.Send(ctx, "b", []byte("→ arrow")); err != nil {
						return err
					}
					_, err := s.ExecContext(ctx, "SELECT 1")
					return err
				})
			}); err != nil {
				t.Fatalf("Atomic with a Send of '→': %v", err)
			}
			sent = append(sent, "→ arrow", "marker")
			if err := l.Send(ctx, "b", []byte("marker")); err != nil {
				t.Fatal(err)
			}
			dbtest.Eventually(t, "the marker", func() bool { return strings.HasSuffix(events(r), "marker") })
			if got, want := events(r), strings.Join(sent, ","); got != want {
				t.Fatalf("got %.80q…, want %.80q…", got, want)
			}
		})
	}
}

// encodedDatabase makes a database of the test's own in encoding enc and
// returns its connection string and a pool over it. The listener sets
// client_encoding itself; the pool's connections must (pgx requires UTF8
// and does not ask for it).
func encodedDatabase(t *testing.T, enc string) (dsn string, pool *dbctx.Pool) {
	t.Helper()
	env := pgtest.New(t)
	ctx := context.Background()
	db := "dbscope_" + strings.ToLower(enc) + "_" + env.Schema()
	if _, err := env.Admin().ExecContext(ctx, fmt.Sprintf(
		"CREATE DATABASE %s ENCODING '%s' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0 OWNER %s", db, enc, env.Role())); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := env.Admin().ExecContext(ctx, "DROP DATABASE "+db+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	dsn, err := pgserver.WithParams(env.DirectDSN(t), "dbname", db)
	if err != nil {
		t.Fatal(err)
	}
	poolDSN, err := pgserver.WithParams(dsn, "client_encoding", "UTF8")
	if err != nil {
		t.Fatal(err)
	}
	sdb, err := sql.Open("pgx", poolDSN)
	if err != nil {
		t.Fatal(err)
	}
	pool = dbctx.New(sdb, nil)
	t.Cleanup(func() { pool.Close(); sdb.Close() })
	return dsn, pool
}
