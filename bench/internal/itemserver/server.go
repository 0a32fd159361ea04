package itemserver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
	"github.com/nats-io/nats.go"
)

// Modes lists the values of Config.Mode.
var Modes = []string{"raw", "sync", "async", "atomic", "pgx", "pgxpool"}

// Config is what Start needs. Zero values are defaults.
type Config struct {
	// Mode is raw, sync, async, atomic, pgx or pgxpool (see the package
	// comment).
	Mode string

	// Addr is where to listen. Default: 127.0.0.1:0.
	Addr string

	// DSN is the database. It is required: the command resolves
	// $DATABASE_URL or pgserver.Start before calling Start.
	DSN string

	// App, when set, replaces the application_name of the server's
	// connections, so that operators and tests find them in
	// pg_stat_activity.
	App string

	// MaxWorkers is the slot count of the pool, and MaxOpenConns and
	// MaxIdleConns of the *sql.DB in every mode. Default: dbctx's,
	// min(32, NumCPU+4).
	MaxWorkers int

	// MaxWaiting and WaitTimeout pass through to dbctx.Options.
	MaxWaiting  int
	WaitTimeout time.Duration

	// WriteTimeout bounds each websocket send in the dbscope modes.
	// Default: wsconsumer's, 10s.
	WriteTimeout time.Duration

	// PingInterval is how often the dbscope modes ping a quiet socket
	// (wsconsumer.Options.PingInterval). Default: wsconsumer's, 30s.
	PingInterval time.Duration

	// Layer is the groups engine of the room endpoints in the dbscope
	// modes: "memory" (the default), "postgres" (LISTEN/NOTIFY, through
	// ListenDSN, default DSN) or "nats" (at NATSURL). The raw mode's rooms
	// are in-process, or with RawNATS over NATS.
	Layer     string
	ListenDSN string

	// NATSURL is the NATS server of the raw mode's rooms (RawNATS) and of
	// the nats layer. Default: nats://127.0.0.1:4222.
	NATSURL string

	// RawNATS carries the raw mode's rooms between instances over NATS
	// (see rawRooms), as a hand-written server would.
	RawNATS bool

	// TestOps honors the "sleep" field of messages (?sleep= on HTTP):
	// the query holds its connection that long. For fault tests only
	// (the items lookup only: not with Tenant or Write).
	TestOps bool

	// Tenant serves the tenant workload (tenant.go) on /ws/items and
	// /items/{id}: every socket and request names its tenant (?tenant=T),
	// its lookups read tenant_items under a row-level-security policy as
	// TenantRole, which the server connects as, and replies carry the
	// tenant the statement saw. The room endpoints are not served.
	Tenant bool

	// Tenants is how many tenants, t1 to tN, have rows with Tenant.
	// Default: DefaultTenants.
	Tenants int

	// Write serves the write workload (write.go): each /ws/items frame,
	// and each POST /items/{id}, inserts a row.
	Write bool

	// PlainWrites passes through to dbctx.Options: the writes table's
	// code leaves no session state, so a write owes DISCARD SEQUENCES
	// alone.
	PlainWrites bool

	// TransactionPooling passes through to dbctx.Options: the DSN goes
	// through PgBouncer in transaction mode.
	TransactionPooling bool

	// Logger receives the server's warnings. Default: slog.Default().
	Logger *slog.Logger
}

// Server is a running item server.
type Server struct {
	cfg      Config
	db       *sql.DB
	pool     *dbctx.Pool           // nil in raw mode
	ws       *wsconsumer.Handler   // nil in raw mode
	rooms    []*wsconsumer.Handler // /ws/room and /ws/fanout; nil in raw mode
	layer    *groups.Layer         // nil in raw mode
	raw      *rawSockets           // raw and pgxpool modes only
	rawRooms *rawRooms             // raw mode only
	pgxp     *pgxpool.Pool         // pgxpool mode only
	schema   string                // where Setup made the tables

	// The statement of a message: rawLook and scopeLook answer GET
	// /items/{id}, and /ws/items frames unless Write; rawWrite and
	// scopeWrite, with Write, POST /items/{id} and the frames. The raw
	// ones take the socket's or request's tenant (Tenant), the scope ones
	// find it in ctx.
	rawLook, rawWrite     func(ctx context.Context, tenant string, m *Msg) error   // raw and pgxpool modes
	scopeLook, scopeWrite func(ctx context.Context, sc *dbctx.Scope, m *Msg) error // the others
	ln                    net.Listener
	http                  *http.Server
	served                chan error
}

// Start opens the database, creates the items table if missing and serves
// until Shutdown. It returns once the server is listening.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxWorkers <= 0 {
		cfg.MaxWorkers = DefaultMaxWorkers()
	}
	dsn := cfg.DSN
	if cfg.App != "" {
		var err error
		if dsn, err = pgserver.WithParams(dsn, "application_name", cfg.App); err != nil {
			return nil, err
		}
	}
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, err
	}
	schema, err := Setup(ctx, db, cfg)
	if err == nil && cfg.Tenant {
		// Setup ran as the DSN's user; the server runs as the role the
		// tenant policy binds.
		db.Close()
		if dsn, err = pgserver.WithUser(dsn, TenantRole, TenantPassword); err == nil {
			db, err = sql.Open("pgx", dsn)
		}
	}
	if err != nil {
		db.Close()
		return nil, err
	}
	// The same *sql.DB settings in every mode: what dbctx.New would set.
	db.SetMaxOpenConns(cfg.MaxWorkers)
	db.SetMaxIdleConns(cfg.MaxWorkers)
	s := &Server{cfg: cfg, db: db, schema: schema, served: make(chan error, 1)}
	mux := http.NewServeMux()
	var h http.Handler = mux
	switch cfg.Mode {
	case "raw", "pgxpool":
		if cfg.Mode == "pgxpool" {
			pc, err := pgxpool.ParseConfig(dsn)
			if err != nil {
				db.Close()
				return nil, err
			}
			pc.MaxConns = int32(cfg.MaxWorkers)
			if s.pgxp, err = pgxpool.NewWithConfig(ctx, pc); err != nil {
				db.Close()
				return nil, err
			}
		}
		s.rawWork()
		s.raw = &rawSockets{conns: map[*websocket.Conn]struct{}{}}
		mux.Handle("GET /ws/items", s.rawWS())
		mux.Handle("GET /items/{id}", s.rawHTTP(s.rawLook))
		if cfg.Write {
			mux.Handle("POST /items/{id}", s.rawHTTP(s.rawWrite))
		}
		if cfg.Mode == "raw" && !cfg.Tenant {
			s.rawRooms = &rawRooms{rooms: map[string]map[*rawMember]struct{}{}}
			if cfg.RawNATS {
				if s.rawRooms.nc, err = nats.Connect(cfg.natsURL(), nats.MaxReconnects(-1)); err != nil {
					s.closeDB()
					return nil, fmt.Errorf("itemserver: NATS: %w", err)
				}
				s.rawRooms.subs = map[string]*nats.Subscription{}
			}
			mux.Handle("GET /ws/room/{name}", s.rawRoom(true))
			mux.Handle("GET /ws/fanout/{name}", s.rawRoom(false))
		}
	case "sync", "async", "atomic", "pgx":
		s.pool = dbctx.New(db, &dbctx.Options{
			MaxWorkers:         cfg.MaxWorkers,
			MaxWaiting:         cfg.MaxWaiting,
			WaitTimeout:        cfg.WaitTimeout,
			TransactionPooling: cfg.TransactionPooling,
			PlainWrites:        cfg.PlainWrites,
			Logger:             cfg.Logger,
		})
		s.scopeWork()
		if s.layer, err = s.newLayer(ctx); err != nil {
			s.closeDB()
			return nil, err
		}
		// No bound on sockets: -idle may ask for more than the default 10,000.
		wsOpts := &wsconsumer.Options{WriteTimeout: cfg.WriteTimeout, PingInterval: cfg.PingInterval,
			Logger: cfg.Logger, Layer: s.layer, MaxSockets: -1}
		style := wsconsumer.NewSync
		if cfg.Mode == "async" {
			style = wsconsumer.NewAsync
		}
		s.ws = style(s.pool, s.consumer(), wsOpts)
		mux.Handle("GET /ws/items", s.ws)
		if !cfg.Tenant {
			for path, lookupItem := range map[string]bool{"GET /ws/room/{name}": true, "GET /ws/fanout/{name}": false} {
				h := style(s.pool, s.roomConsumer(lookupItem), wsOpts)
				s.rooms = append(s.rooms, h)
				mux.Handle(path, h)
			}
		}
		mux.Handle("GET /items/{id}", s.itemHandler(s.scopeLook))
		if cfg.Write {
			mux.Handle("POST /items/{id}", s.itemHandler(s.scopeWrite))
		}
		mux.HandleFunc("GET /debug/dbstats", func(w http.ResponseWriter, r *http.Request) {
			writeJSON(w, http.StatusOK, s.pool.Stats())
		})
		h = middleware.DB(s.pool)(mux)
	default:
		db.Close()
		return nil, fmt.Errorf("itemserver: unknown mode %q (want raw, sync, async, atomic, pgx or pgxpool)", cfg.Mode)
	}
	if s.ln, err = net.Listen("tcp", cfg.Addr); err != nil {
		s.closeDB()
		return nil, err
	}
	s.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Clients that vanish mid-request are part of the fault suite.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() { s.served <- s.http.Serve(s.ln) }()
	return s, nil
}

// newLayer makes the room endpoints' layer (Config.Layer).
func (s *Server) newLayer(ctx context.Context) (*groups.Layer, error) {
	var e groups.Engine
	switch s.cfg.Layer {
	case "", "memory":
		e = groups.NewMemory()
	case "postgres":
		listen := s.cfg.ListenDSN
		if listen == "" {
			listen = s.cfg.DSN
		}
		if s.cfg.App != "" {
			// Its own name, so that counting the server's connections
			// (bench/load's peak_db_conns) counts the pool's alone.
			var err error
			if listen, err = pgserver.WithParams(listen, "application_name", s.cfg.App+"-listen"); err != nil {
				return nil, err
			}
		}
		e = groups.NewPostgres(s.pool, &groups.PostgresOptions{ListenDSN: listen, Namespace: s.schema, Logger: s.cfg.Logger})
	case "nats":
		var err error
		if e, err = natslayer.Connect(s.cfg.natsURL(), &natslayer.Options{Logger: s.cfg.Logger}); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("itemserver: unknown layer %q (want memory, postgres or nats)", s.cfg.Layer)
	}
	return groups.New(e, &groups.Options{Logger: s.cfg.Logger})
}

func (c *Config) natsURL() string {
	if c.NATSURL == "" {
		return nats.DefaultURL
	}
	return c.NATSURL
}

// Layer returns the room endpoints' layer, nil in raw mode.
func (s *Server) Layer() *groups.Layer { return s.layer }

// DefaultMaxWorkers is dbctx's default slot count: $DBCTX_MAX_WORKERS,
// else min(32, NumCPU+4).
func DefaultMaxWorkers() int {
	var n int
	if _, err := fmt.Sscan(os.Getenv("DBCTX_MAX_WORKERS"), &n); err == nil && n > 0 {
		return n
	}
	return min(32, runtime.NumCPU()+4)
}

// Addr returns the address the server listens on.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL returns the server's base URL, http://host:port.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Pool returns the server's pool, nil in raw mode.
func (s *Server) Pool() *dbctx.Pool { return s.pool }

// DB returns the server's *sql.DB.
func (s *Server) DB() *sql.DB { return s.db }

// MaxWorkers returns the slot count, which bounds the server's database
// connections in every mode.
func (s *Server) MaxWorkers() int { return s.cfg.MaxWorkers }

// Sockets returns the number of live websockets.
func (s *Server) Sockets() int {
	if s.ws != nil {
		n := s.ws.Len()
		for _, h := range s.rooms {
			n += h.Len()
		}
		return n
	}
	return s.raw.len()
}

// Shutdown closes every websocket with 1001 and waits for their handlers,
// then shuts the HTTP server down, then closes the pool and the database.
// What ctx leaves unfinished is closed without a handshake and ctx's error
// returned.
func (s *Server) Shutdown(ctx context.Context) error {
	var errs []error
	// Sockets first: http.Server.Shutdown does not wait for hijacked
	// connections, and their disconnects still need the pool.
	if s.ws != nil {
		errs = append(errs, s.ws.Shutdown(ctx))
		for _, h := range s.rooms {
			errs = append(errs, h.Shutdown(ctx))
		}
	} else {
		errs = append(errs, s.raw.shutdown(ctx))
	}
	if err := s.http.Shutdown(ctx); err != nil {
		errs = append(errs, err)
		s.http.Close()
	}
	if err := <-s.served; !errors.Is(err, http.ErrServerClosed) {
		errs = append(errs, err)
	}
	s.closeDB()
	return errors.Join(errs...)
}

func (s *Server) closeDB() {
	if s.layer != nil {
		s.layer.Close()
	}
	if s.pool != nil {
		s.pool.Close()
	}
	if s.pgxp != nil {
		s.pgxp.Close()
	}
	if s.rawRooms != nil && s.rawRooms.nc != nil {
		s.rawRooms.nc.Close()
	}
	s.db.Close()
}
