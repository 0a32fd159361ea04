// Package chatserver is the chat application that examples/chi and
// examples/nethttp serve: its handlers and websocket consumers, which show
// dbscope at work, and its start-up and shutdown. Each example's main.go
// routes it, on chi or on http.ServeMux; package chat holds what is not
// about dbscope.
package chatserver

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/dbprom"
	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Config is what Run needs; tests fill it in with their own database and
// listener.
type Config struct {
	Addr     string       // where to listen, when Listener is nil
	Listener net.Listener // taken over by Run, if set
	DSN      string       // "": $DATABASE_URL, else the local server, else a throwaway cluster
	// ListenDSN is the rooms' listener's connection, straight to
	// PostgreSQL where DSN goes through PgBouncer. "": $LISTEN_DATABASE_URL,
	// else DSN.
	ListenDSN string
	// TransactionPooling says DSN goes through PgBouncer in transaction
	// mode: the pool declares dbctx.Options.TransactionPooling, so that the
	// tenant of every statement is set with it, transaction-locally (a
	// session-level setting would stay on whichever server connection
	// PgBouncer picked), and where DSN does not choose pgx's
	// default_query_exec_mode, Run chooses exec: the default prepares
	// statements on the server, which PgBouncer before 1.21 loses between
	// transactions. The examples' -transaction-pooling flag; false:
	// $TRANSACTION_POOLING=1.
	TransactionPooling bool
	// Layer is the engine that carries the rooms between instances:
	// "postgres" (LISTEN/NOTIFY on the database, the default: "" too),
	// "memory" (this instance alone) or a NATS URL, such as
	// nats://127.0.0.1:4222 (more than one, comma-separated, for a
	// cluster). The examples' -layer flag, or $LAYER.
	Layer string
	// AdminAddr, or Admin (taken over by Run, if set), is where to serve
	// what only operators should read: GET /metrics and GET
	// /debug/dbstats. With neither, they are served on the public
	// listener with the rest, as a development server may. The examples'
	// -admin-addr flag, or $ADMIN_ADDR.
	AdminAddr string
	Admin     net.Listener
	// NoServerTiming leaves out the Server-Timing header (the time each
	// request spent in the database), which every client can read. The
	// examples' -server-timing=false.
	NoServerTiming bool
	// OTel traces requests, sockets and statements and reports the pool's
	// metrics with OpenTelemetry (package dbotel): over OTLP/HTTP to
	// $OTEL_EXPORTER_OTLP_ENDPOINT where set, else as JSON to OTelOut
	// (nil: stdout). The examples' -otel flag, or $OTEL=1.
	OTel    bool
	OTelOut io.Writer
	Log     *slog.Logger
}

// Run serves the application until ctx is canceled, with the handler
// routes makes of it, then shuts down in order: sockets (closed with
// 1001), HTTP, the pool, the database, the throwaway cluster.
func Run(ctx context.Context, cfg Config, routes func(*App) http.Handler) error {
	log := cfg.Log
	if cfg.DSN == "" {
		// $DATABASE_URL, else the local server, else a throwaway
		// cluster, removed on return; with no PostgreSQL at all the
		// error says how to get one.
		pg, err := pgserver.Open(ctx, func(format string, args ...any) {
			log.Info("postgres: " + fmt.Sprintf(format, args...))
		})
		if err != nil {
			return err
		}
		defer func() {
			pg.Stop()
			if pg.Throwaway {
				log.Info("postgres: throwaway cluster removed")
			}
		}()
		cfg.DSN = pg.URL
	}
	var tel *telemetry // nil: no -otel
	if cfg.OTel {
		var err error
		if tel, err = newTelemetry(ctx, cfg.OTelOut); err != nil {
			return fmt.Errorf("otel: %w", err)
		}
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := tel.shutdown(ctx); err != nil {
				log.Warn("otel: shutdown", "err", err)
			}
		}()
	}
	tp := cfg.TransactionPooling || os.Getenv("TRANSACTION_POOLING") == "1"
	if tp && !strings.Contains(cfg.DSN, "default_query_exec_mode") {
		// pgx's default exec mode, cache_statement, prepares statements
		// on the server connection, which PgBouncer (before 1.21, or
		// without max_prepared_statements) does not carry to the next
		// transaction: under load, statements fail with prepared
		// statement "stmtcache_…" already exists, or does not exist.
		// Behind a pooler, exec, as dbctx's docs say, unless the
		// connection string chooses.
		var err error
		if cfg.DSN, err = pgserver.WithParams(cfg.DSN, "default_query_exec_mode", "exec"); err != nil {
			return err
		}
		log.Info("transaction pooling: default_query_exec_mode=exec (no statement is prepared on the server)")
	}
	db, err := tel.openDB(cfg.DSN)
	if err != nil {
		return err
	}
	defer db.Close()
	// PlainWrites: the app's schema (chat.Migrate) runs no code that
	// leaves session state (no trigger or rule; its defaults call only
	// built-ins), so a message's INSERT owes DISCARD SEQUENCES alone, not
	// the whole reset. Drop it if a trigger ever sets a session setting.
	pool, err := tel.pool(db, &dbctx.Options{Logger: log, TransactionPooling: tp, PlainWrites: true})
	if err != nil {
		return err
	}
	defer pool.Close()
	var asRole string
	if err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		// One transaction, which chat.Migrate serializes: instances that
		// start together (a rollout) take turns, not racing each
		// other's CREATE TABLE and GRANT.
		return dbctx.Atomic(ctx, func(ctx context.Context) error {
			if err := chat.Migrate(ctx, s); err != nil {
				return err
			}
			var err error
			asRole, err = policyRole(ctx, s, log)
			return err
		})
	}); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}
	engine, err := newEngine(ctx, cfg, db, pool)
	if err != nil {
		return err
	}
	layer, err := groups.New(engine, &groups.Options{Logger: log})
	if err != nil {
		return err
	}
	defer layer.Close()

	a := &App{Pool: pool, Log: log, Layer: layer, ServerTiming: !cfg.NoServerTiming, asRole: asRole}
	// A socket's records carry the attributes routes gives App.LogAttrs
	// (read when a record is logged: routes runs after this).
	logAttrs := func(ctx context.Context) []slog.Attr { return a.logAttrs(ctx) }
	wsOpts := tel.consumerOptions(&wsconsumer.Options{Logger: log, Layer: layer, LogAttrs: logAttrs})
	a.SyncWS = wsconsumer.NewSync(pool, a.syncConsumer(), wsOpts)
	a.AsyncWS = wsconsumer.NewAsync(pool, a.asyncConsumer(), wsOpts)
	a.Metrics = metrics(db, pool, layer, engine, map[string]*wsconsumer.Handler{"sync": a.SyncWS, "async": a.AsyncWS}, log)
	a.Atomic = middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: log, LogAttrs: logAttrs})
	// A cross-site page may send a POST with its visitor's cookies (a
	// form, or fetch with text/plain, which no CORS preflight stops):
	// refused with 403, as websocket upgrades from another origin are. A
	// real service, whose tenant comes from a session cookie, needs it.
	public := tel.handler(http.NewCrossOriginProtection().Handler(routes(a)))
	admin := a.adminRoutes()
	var adminLn net.Listener
	switch {
	case cfg.Admin != nil:
		adminLn = cfg.Admin
	case cfg.AdminAddr != "":
		if adminLn, err = net.Listen("tcp", cfg.AdminAddr); err != nil {
			return err
		}
	default:
		// Development: one listener for all.
		public = withAdmin(public, admin)
		admin = nil
	}
	newServer := func(h http.Handler) *http.Server {
		return &http.Server{
			Handler:           h,
			ReadHeaderTimeout: 10 * time.Second,
			// The whole request, body included (net/http's default:
			// no bound): a client that trickles a POST's body would
			// hold its connection, a goroutine and a file descriptor
			// for as long as it likes, and, unlike sockets, without
			// MaxSockets's bound. A websocket, hijacked, is not subject
			// to it; a request still running then has its context
			// canceled (net/http's doing), far past what the pool lets
			// one wait (WaitTimeout 2s, ConnectTimeout 10s).
			ReadTimeout: 20 * time.Second,
			// A keep-alive connection between requests is closed after
			// two idle minutes (net/http's default: never); websockets,
			// hijacked, are not subject to it: MaxSockets bounds them,
			// and pings end those whose client is gone
			// (wsconsumer.Options.IdleTimeout, not set here, would
			// close a room's silent readers).
			IdleTimeout: 2 * time.Minute,
			// Each socket keeps its upgrade request: headers of a few
			// KiB, not net/http's default bound of 1 MiB.
			MaxHeaderBytes: 64 << 10,
			ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		}
	}
	srv := newServer(public)

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			return err
		}
	}
	log.Info("serving", "url", "http://"+ln.Addr().String())
	served := make(chan error, 2)
	go func() { served <- srv.Serve(ln) }()
	var adminSrv *http.Server
	if admin != nil {
		adminSrv = newServer(admin)
		log.Info("serving /metrics and /debug/dbstats", "url", "http://"+adminLn.Addr().String())
		go func() { served <- adminSrv.Serve(adminLn) }()
	}
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}

	log.Info("shutting down")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Sockets first: http.Server.Shutdown does not wait for hijacked
	// connections, and their disconnects still need the pool.
	for _, h := range []*wsconsumer.Handler{a.SyncWS, a.AsyncWS} {
		if err := h.Shutdown(ctx); err != nil {
			log.Warn("websocket shutdown", "err", err)
		}
	}
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	<-served
	if adminSrv != nil {
		if err := adminSrv.Shutdown(ctx); err != nil {
			log.Warn("admin http shutdown", "err", err)
		}
		<-served
	}
	return nil // deferred: layer.Close, pool.Close, db.Close, the cluster's removal
}

// adminRoutes serves what only operators should read: the pool's and the
// layer's counters, and the process's metrics. They tell anyone who reads
// them the load, the sizing and the failures of the service.
func (a *App) adminRoutes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/dbstats", a.Stats)
	mux.Handle("GET /metrics", a.Metrics)
	return mux
}

// withAdmin serves admin's paths from admin, the rest from public.
func withAdmin(public, admin http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", public)
	mux.Handle("/debug/dbstats", admin)
	mux.Handle("/metrics", admin)
	return mux
}

// newEngine returns the engine of cfg.Layer. The rooms are groups,
// carried between instances: run two on two ports and they share the
// rooms.
func newEngine(ctx context.Context, cfg Config, db *sql.DB, pool *dbctx.Pool) (groups.Engine, error) {
	switch {
	case cfg.Layer == "" || cfg.Layer == "postgres":
		// PostgreSQL LISTEN/NOTIFY, on a listener's connection of its
		// own. The schema is the namespace: apps (or tests) in other
		// schemas of the database do not hear them.
		listen := cfg.ListenDSN
		if listen == "" {
			listen = EnvOr("LISTEN_DATABASE_URL", cfg.DSN)
		}
		var schema string
		if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
			return nil, fmt.Errorf("current schema: %w", err)
		}
		// MaxPayload at NOTIFY's limit: a message too large for it is
		// in the messages table already, and publish sends its id
		// rather than a copy through the engine's table.
		return groups.NewPostgres(pool, &groups.PostgresOptions{
			ListenDSN: listen, Namespace: schema, Logger: cfg.Log, MaxPayload: 7999,
		}), nil
	case cfg.Layer == "memory":
		return groups.NewMemory(), nil
	case strings.Contains(cfg.Layer, "://"):
		// NATS: subjects chat.g.<room's group>; apps that share a NATS
		// server need prefixes of their own.
		return natslayer.Connect(cfg.Layer, &natslayer.Options{Prefix: "chat", Name: "chat", Logger: cfg.Log})
	}
	return nil, fmt.Errorf("layer %q: want postgres, memory or a NATS URL (nats://host:4222)", cfg.Layer)
}

// App holds the handlers and the websocket endpoints, for routes to mount.
type App struct {
	Pool    *dbctx.Pool
	Log     *slog.Logger
	Layer   *groups.Layer       // a group per room
	SyncWS  *wsconsumer.Handler // /ws/sync?room=, the sync style
	AsyncWS *wsconsumer.Handler // /ws/async?room=, the async style
	// Metrics serves GET /metrics: the pool's, the layer's, database/sql's
	// and the Go runtime's metrics, for Prometheus to scrape. Run serves
	// it, and Stats, on the admin listener where there is one.
	Metrics http.Handler
	// Atomic is middleware.Atomic for POST /api/messages: it commits
	// before the 201 goes out, and the room hears of the message then
	// (over PostgreSQL its NOTIFY is part of the transaction; other
	// engines publish at dbctx.OnCommit).
	Atomic func(http.Handler) http.Handler
	// ServerTiming says whether responses carry Server-Timing
	// (middleware.DBOptions.ServerTiming): routes passes it on.
	ServerTiming bool
	// LogAttrs, if set, returns the router's own request attributes
	// (request ID, client) from a request's or a socket's context, for
	// the records logged about it: the app's, middleware.Atomic's and the
	// websocket handlers'.
	LogAttrs func(ctx context.Context) []slog.Attr

	asRole string // see policyRole
}

func (a *App) logAttrs(ctx context.Context) []slog.Attr {
	t, _ := tenant.Value(ctx)
	attrs := []slog.Attr{slog.String("tenant", t)}
	if a.LogAttrs == nil {
		return attrs
	}
	return append(attrs, a.LogAttrs(ctx)...)
}

// tenant is the tenant every statement of a request or a socket runs
// with: the messages table's row-level-security policy reads it.
var tenant = dbctx.NewSetting("app.tenant")

// role is the role they run as, where the service connects as a role the
// policy does not bind (see policyRole).
var role = dbctx.NewSetting("role")

// Tenant is the middleware that declares each request's tenant, and so
// each socket's (a socket keeps its upgrade request's values): the
// X-Tenant header (one: two are refused) or ?tenant=, DefaultTenant
// without. A real service takes it from the signed-in user, after
// authentication. Mount it before or inside middleware.DB: statements
// read their settings from their own context.
func (a *App) Tenant(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// One X-Tenant only: of two, Header.Get takes the first, where a
		// proxy that appends its own after the client's, or a log that
		// reads the last, would mean the other.
		ts := r.Header.Values("X-Tenant")
		if len(ts) > 1 {
			http.Error(w, "more than one X-Tenant header", http.StatusBadRequest)
			return
		}
		t := ""
		if len(ts) == 1 {
			t = ts[0]
		}
		if t == "" {
			t = r.URL.Query().Get("tenant")
		}
		t, err := chat.CheckTenant(t)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx := tenant.With(r.Context(), t)
		if a.asRole != "" {
			ctx = role.With(ctx, a.asRole)
		}
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// policyRole returns "" where the service's own role is bound by the
// messages table's policy, as it is in production: a role that is
// neither a superuser nor BYPASSRLS (and whose connection string names
// it). A development server connects as a superuser, whom every policy
// lets through: then the statements run as chatPolicyRole, made here
// with what it needs, declared as the role setting beside the tenant.
func policyRole(ctx context.Context, s *dbctx.Scope, log *slog.Logger) (string, error) {
	var bypass bool
	if err := s.QueryRowContext(ctx, "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").Scan(&bypass); err != nil {
		return "", err
	}
	if !bypass {
		return "", nil
	}
	for _, q := range []string{
		`DO $$ BEGIN CREATE ROLE ` + chatPolicyRole + ` NOLOGIN;
			EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$`,
		`DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO ` + chatPolicyRole + `', current_schema()); END $$`,
		`GRANT SELECT, INSERT ON messages TO ` + chatPolicyRole,
	} {
		if _, err := s.ExecContext(ctx, q); err != nil {
			return "", err
		}
	}
	log.Info("connected as a role that bypasses row-level security: statements run as " + chatPolicyRole +
		"; in production, connect as a role without BYPASSRLS")
	return chatPolicyRole, nil
}

// chatPolicyRole is the role statements run as on a development server.
const chatPolicyRole = "dbscope_chat"

// room is a socket's room: a room of its tenant.
type room struct{ tenant, name string }

// Stats answers GET /debug/dbstats with the pool's statistics, the rooms'
// layer's and the websocket handlers'.
func (a *App) Stats(w http.ResponseWriter, r *http.Request) {
	chat.WriteJSON(w, http.StatusOK, struct {
		dbctx.Stats
		Groups  groups.Stats
		SyncWS  wsconsumer.Stats
		AsyncWS wsconsumer.Stats
	}{a.Pool.Stats(), a.Layer.Stats(), a.SyncWS.Stats(), a.AsyncWS.Stats()})
}

// metrics returns the handler of GET /metrics. The registry is the
// server's own, not prometheus.DefaultRegisterer: two instances in one
// process (as in the tests) each export their own pool.
func metrics(db *sql.DB, pool *dbctx.Pool, layer *groups.Layer, engine groups.Engine, endpoints map[string]*wsconsumer.Handler, log *slog.Logger) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewDBStatsCollector(db, "chat"),
		dbprom.NewCollector(pool, nil),
		dbprom.NewGroupsCollector(layer, nil),
	)
	if pg, ok := engine.(*groups.Postgres); ok {
		reg.MustRegister(dbprom.NewPostgresCollector(pg, nil))
	}
	for name, h := range endpoints {
		reg.MustRegister(dbprom.NewConsumerCollector(h, &dbprom.Options{ConstLabels: prometheus.Labels{"endpoint": name}}))
	}
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	})
}

// Ready answers GET /readyz: 200 while the rooms' engine is connected
// (PostgreSQL's listener, NATS), 503 while it is not (it reconnects by
// itself).
func (a *App) Ready(w http.ResponseWriter, r *http.Request) {
	if err := a.Layer.Ready(); err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ready\n"))
}

// ListMessages answers GET /api/messages?room=: the room's history. It
// queries through the request's scope, which middleware.DB set up.
func (a *App) ListMessages(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	room, err := chat.CheckRoom(r.URL.Query().Get("room"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	msgs, err := chat.History(ctx, dbctx.From(ctx), room)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	chat.WriteJSON(w, http.StatusOK, msgs)
}

// CreateMessage answers POST /api/messages {"room","author","body"} with
// 201 and the stored message, inside middleware.Atomic's transaction.
func (a *App) CreateMessage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var p chat.Post
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&p); err != nil {
		http.Error(w, "invalid JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := p.Check(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m, err := chat.Insert(ctx, dbctx.From(ctx), p)
	if err == nil {
		// In the transaction: the room hears of it only once committed,
		// so a socket never shows a message that GET /api/messages
		// does not.
		err = a.publish(ctx, m)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	chat.WriteJSON(w, http.StatusCreated, m)
}

// group is the group of a tenant's room: room names are free text, group
// names are not, and two tenants' rooms of the same name are two groups.
func group(tenant, room string) string {
	h := sha256.Sum256([]byte(tenant + "\x00" + room))
	return "chat." + hex.EncodeToString(h[:16])
}

// publish tells every socket of m's room, on every instance, through the
// layer: the message itself, or, where it is too large for the engine
// (NOTIFY's 7,999 bytes, as newEngine sets it; NATS's max_payload), its
// id, for each receiving socket to read it.
func (a *App) publish(ctx context.Context, m chat.Message) error {
	data, err := json.Marshal(chat.MessageFrame(m))
	if err != nil {
		return err
	}
	err = a.Layer.Send(ctx, group(m.Tenant, m.Room), data)
	if errors.Is(err, groups.ErrTooLarge) {
		data, _ = json.Marshal(chat.RefFrame(m))
		err = a.Layer.Send(ctx, group(m.Tenant, m.Room), data)
	}
	return err
}

// event is the Event callback of both endpoints: a message pushed to the
// room goes to the socket as it is; one too large for the engine is read
// first; after a gap (the engine's connection broke, or it fell behind)
// the socket gets the room's history again. In the sync style ctx carries the
// socket's scope, closed-old before the query; in the async style the
// query goes through dbctx.Do.
func (a *App) event(ctx context.Context, s *wsconsumer.Session, e groups.Event) error {
	room := s.State.(room)
	if e.Gap {
		msgs, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) ([]chat.Message, error) {
			return chat.History(ctx, db, room.name)
		})
		if err != nil {
			return err
		}
		return s.SendJSON(ctx, chat.HistoryFrame(msgs))
	}
	var f chat.Out
	if err := json.Unmarshal(e.Data, &f); err != nil || f.Message == nil || f.Message.Room != room.name || f.Message.Tenant != room.tenant {
		return nil // not this room's (two rooms may share a group)
	}
	if f.Type == "ref" {
		m, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) (chat.Message, error) {
			return chat.ByID(ctx, db, f.Message.ID)
		})
		if err != nil {
			return err
		}
		return s.SendJSON(ctx, chat.MessageFrame(m))
	}
	return s.Send(ctx, websocket.MessageText, e.Data)
}

// fail answers a database error: what middleware.Answer gives the
// conditions of dbctx (503 with Retry-After on overload or an outage, 500
// for a misconfiguration the pool has logged, nothing for a client that
// left), else 500 with the detail only in the log.
func (a *App) fail(w http.ResponseWriter, r *http.Request, err error) {
	if middleware.Answer(w, r, err) {
		return
	}
	attrs := append([]slog.Attr{slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Any("err", err)},
		a.logAttrs(r.Context())...)
	a.Log.LogAttrs(r.Context(), slog.LevelError, "request failed", attrs...)
	http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
}

// syncConsumer serves /ws/sync?room= in the sync style: each callback
// runs in a worker slot with the socket's scope, so it queries
// dbctx.From(ctx) directly. The slot is held until the callback returns,
// pushes included.
func (a *App) syncConsumer() wsconsumer.Consumer {
	return wsconsumer.JSON(wsconsumer.JSONConsumer[chat.In]{
		Connect: a.connect,
		Receive: func(ctx context.Context, s *wsconsumer.Session, in chat.In) error {
			p, err := a.post(s, in)
			if err != nil {
				return s.SendJSON(ctx, chat.ErrorFrame(err))
			}
			// The message and the room's news of it in one transaction,
			// as POST /api/messages has them: where the client leaves
			// between the two (its socket's ctx canceled), neither
			// happens, where a message stored would never reach the room.
			return dbctx.Atomic(ctx, func(ctx context.Context) error {
				m, err := chat.Insert(ctx, dbctx.From(ctx), p)
				if err != nil {
					return err // closes with 1011, or 1013 when busy
				}
				return a.publish(ctx, m)
			})
		},
		Event:   a.event,
		Invalid: a.invalidFrame,
	})
}

// asyncConsumer serves /ws/async?room= in the async style: callbacks hold
// no worker slot and reach the database only through dbctx.Do, so a slot
// is held for the query alone, not while pushing to the room.
func (a *App) asyncConsumer() wsconsumer.Consumer {
	return wsconsumer.JSON(wsconsumer.JSONConsumer[chat.In]{
		Connect: a.connect,
		Receive: func(ctx context.Context, s *wsconsumer.Session, in chat.In) error {
			p, err := a.post(s, in)
			if err != nil {
				return s.SendJSON(ctx, chat.ErrorFrame(err))
			}
			// In one transaction, as in the sync style.
			return dbctx.Do(ctx, func(ctx context.Context, db *dbctx.Scope) error {
				return dbctx.Atomic(ctx, func(ctx context.Context) error {
					m, err := chat.Insert(ctx, db, p)
					if err != nil {
						return err
					}
					return a.publish(ctx, m)
				})
			})
		},
		Event:   a.event,
		Invalid: a.invalidFrame,
	})
}

// connect, the Connect of both endpoints, refuses a bad room name with 400
// and, once the socket is accepted, joins the room's group and sends its
// history. Join comes before the history is read, so that no message falls
// between the two (one may come twice: the page keeps messages by id). The
// goroutine's ctx is async in both styles: it queries through dbctx.Do.
func (a *App) connect(ctx context.Context, s *wsconsumer.Session) error {
	name, err := chat.CheckRoom(s.Request().URL.Query().Get("room"))
	if err != nil {
		return wsconsumer.Reject(http.StatusBadRequest, err.Error())
	}
	// The tenant the Tenant middleware declared for the upgrade request,
	// which every statement of the socket runs with.
	t, ok := tenant.Value(ctx)
	if !ok {
		return wsconsumer.Reject(http.StatusForbidden, "no tenant")
	}
	room := room{tenant: t, name: name}
	s.State = room
	s.Go(func(ctx context.Context) {
		// Fail answers an error as a callback's would be: a socket
		// closed meanwhile (the join or the query canceled) is no
		// failure, overload closes with 1013, anything else with 1011
		// and an ERROR record.
		if err := s.Join(ctx, group(room.tenant, room.name)); err != nil {
			s.Fail(fmt.Errorf("joining room %q: %w", room.name, err))
			return
		}
		msgs, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) ([]chat.Message, error) {
			return chat.History(ctx, db, room.name)
		})
		if err == nil {
			err = s.SendJSON(ctx, chat.HistoryFrame(msgs))
		}
		if err != nil {
			s.Fail(fmt.Errorf("history of room %q: %w", room.name, err))
		}
	})
	return nil
}

// post turns a say frame into a checked post to the socket's room.
func (a *App) post(s *wsconsumer.Session, in chat.In) (chat.Post, error) {
	if in.Type != "say" {
		return chat.Post{}, fmt.Errorf("unknown frame type %q", in.Type)
	}
	p := chat.Post{Room: s.State.(room).name, Author: in.Author, Body: in.Body}
	return p, p.Check()
}

// invalidFrame answers a frame that is not JSON and keeps the socket open.
func (a *App) invalidFrame(ctx context.Context, s *wsconsumer.Session, _ []byte, err error) error {
	return s.SendJSON(ctx, chat.ErrorFrame(errors.New("invalid JSON frame")))
}

// EnvOr returns the environment variable key, or def where it is unset.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
