// Command chi is a chat room whose state lives in PostgreSQL, served with
// the chi router and chi's own middleware around dbscope's: a page, a JSON
// API and two websocket endpoints, one per wsconsumer style.
// examples/nethttp is the same application on http.ServeMux.
//
//	go run ./examples/chi            # http://127.0.0.1:8080
//	go run ./examples/chi -addr :9000
//
// It uses $DATABASE_URL; without it the local server at 127.0.0.1:5432,
// and without that a throwaway cluster it removes on exit.
package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	"github.com/go-chi/chi/v5"
	chimw "github.com/go-chi/chi/v5/middleware"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

func main() {
	addr := flag.String("addr", envOr("ADDR", "127.0.0.1:8080"), "listen address (env ADDR)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, config{Addr: *addr, Log: log}); err != nil {
		fmt.Fprintln(os.Stderr, "chi:", err)
		os.Exit(1)
	}
}

// config is what run needs; tests fill it in with their own database and
// listener.
type config struct {
	Addr     string       // where to listen, when Listener is nil
	Listener net.Listener // taken over by run, if set
	DSN      string       // "": $DATABASE_URL, else the local server, else a throwaway cluster
	Log      *slog.Logger
}

// run serves until ctx is canceled, then shuts down in order: sockets
// (closed with 1001), HTTP, the pool, the database, the throwaway cluster.
func run(ctx context.Context, cfg config) error {
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
	db, err := sql.Open("pgx", cfg.DSN)
	if err != nil {
		return err
	}
	defer db.Close()
	pool := dbctx.New(db, &dbctx.Options{Logger: log})
	defer pool.Close()
	if err := pool.Do(ctx, func(ctx context.Context, s *dbctx.Scope) error {
		return chat.Migrate(ctx, s)
	}); err != nil {
		return fmt.Errorf("create schema: %w", err)
	}

	a := &app{log: log, rooms: chat.NewRooms(log)}
	wsOpts := &wsconsumer.Options{Logger: log}
	wsSync := wsconsumer.NewSync(pool, a.syncConsumer(), wsOpts)
	wsAsync := wsconsumer.NewAsync(pool, a.asyncConsumer(), wsOpts)
	atomic := middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: log})

	router := chi.NewRouter()
	// chi's middleware goes outside ours: Recoverer then sees a panic
	// after middleware.DB has discarded the request's connection.
	// ClientIPFromRemoteAddr replaces RealIP, deprecated since chi v5.5 as
	// spoofable; behind a proxy use ClientIPFromXFFTrustedProxies.
	router.Use(chimw.RequestID, chimw.ClientIPFromRemoteAddr, chimw.Recoverer)
	router.Use(middleware.DBWithOpts(pool, &middleware.Options{ServerTiming: true}))
	router.Get("/", chat.ServePage)
	router.Get("/api/messages", a.listMessages)
	// Atomic commits before the 201 goes out; dbctx.OnCommit pushes then.
	router.With(atomic).Post("/api/messages", a.createMessage)
	router.Method(http.MethodGet, "/ws/sync", wsSync)
	router.Method(http.MethodGet, "/ws/async", wsAsync)
	router.Get("/debug/dbstats", func(w http.ResponseWriter, r *http.Request) {
		chat.WriteJSON(w, http.StatusOK, pool.Stats())
	})
	srv := &http.Server{
		Handler:           router,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Addr); err != nil {
			return err
		}
	}
	log.Info("serving", "url", "http://"+ln.Addr().String())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
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
	for _, h := range []*wsconsumer.Handler{wsSync, wsAsync} {
		if err := h.Shutdown(ctx); err != nil {
			log.Warn("websocket shutdown", "err", err)
		}
	}
	if err := srv.Shutdown(ctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	<-served
	return nil // deferred: pool.Close, db.Close, the cluster's removal
}

// app holds the handlers and the sockets of each room.
type app struct {
	log   *slog.Logger
	rooms *chat.Rooms
}

// listMessages answers GET /api/messages?room=: the room's history. It
// queries through the request's scope, which middleware.DB set up.
func (a *app) listMessages(w http.ResponseWriter, r *http.Request) {
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

// createMessage answers POST /api/messages {"room","author","body"} with
// 201 and the stored message, inside middleware.Atomic's transaction.
func (a *app) createMessage(w http.ResponseWriter, r *http.Request) {
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
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Pushed only once committed: a socket never shows a message that
	// GET /api/messages does not.
	dbctx.OnCommit(ctx, func() { a.rooms.Broadcast(m.Room, chat.MessageFrame(m)) })
	chat.WriteJSON(w, http.StatusCreated, m)
}

// fail answers a database error: 503 with Retry-After on overload, else
// 500 with the detail only in the log.
func (a *app) fail(w http.ResponseWriter, r *http.Request, err error) {
	if middleware.Busy(w, err) {
		return
	}
	a.log.Error("request failed", "method", r.Method, "path", r.URL.Path,
		"request_id", chimw.GetReqID(r.Context()), "client", chimw.GetClientIP(r.Context()), "err", err)
	http.Error(w, http.StatusText(http.StatusInternalServerError), http.StatusInternalServerError)
}

// syncConsumer serves /ws/sync?room= in the sync style: each callback
// runs in a worker slot with the socket's scope, so it queries
// dbctx.From(ctx) directly. The slot is held until the callback returns,
// pushes included.
func (a *app) syncConsumer() wsconsumer.Consumer {
	return wsconsumer.JSON(wsconsumer.JSONConsumer[chat.In]{
		Connect: a.connect,
		Receive: func(ctx context.Context, s *wsconsumer.Session, in chat.In) error {
			p, err := a.post(s, in)
			if err != nil {
				return s.SendJSON(ctx, chat.ErrorFrame(err))
			}
			m, err := chat.Insert(ctx, dbctx.From(ctx), p)
			if err != nil {
				return err // closes with 1011, or 1013 when busy
			}
			a.rooms.Broadcast(m.Room, chat.MessageFrame(m))
			return nil
		},
		Invalid:    a.invalidFrame,
		Disconnect: a.leave,
	})
}

// asyncConsumer serves /ws/async?room= in the async style: callbacks hold
// no worker slot and reach the database only through dbctx.Do, so a slot
// is held for the query alone, not while pushing to the room.
func (a *app) asyncConsumer() wsconsumer.Consumer {
	return wsconsumer.JSON(wsconsumer.JSONConsumer[chat.In]{
		Connect: a.connect,
		Receive: func(ctx context.Context, s *wsconsumer.Session, in chat.In) error {
			p, err := a.post(s, in)
			if err != nil {
				return s.SendJSON(ctx, chat.ErrorFrame(err))
			}
			m, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) (chat.Message, error) {
				return chat.Insert(ctx, db, p)
			})
			if err != nil {
				return err
			}
			a.rooms.Broadcast(m.Room, chat.MessageFrame(m))
			return nil
		},
		Invalid:    a.invalidFrame,
		Disconnect: a.leave,
	})
}

// connect, the Connect of both endpoints, refuses a bad room name with 400
// and, once the socket is accepted, joins the room and sends its history.
// Join comes before the history is read, so that no message falls between
// the two (one may come twice: the page keeps messages by id). The
// goroutine's ctx is async in both styles: it queries through dbctx.Do.
func (a *app) connect(_ context.Context, s *wsconsumer.Session) error {
	room, err := chat.CheckRoom(s.Request().URL.Query().Get("room"))
	if err != nil {
		return wsconsumer.Reject(http.StatusBadRequest, err.Error())
	}
	s.State = room
	s.Go(func(ctx context.Context) {
		a.rooms.Join(room, s)
		msgs, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) ([]chat.Message, error) {
			return chat.History(ctx, db, room)
		})
		switch {
		case errors.Is(err, dbctx.ErrBusy):
			s.Close(websocket.StatusTryAgainLater, "try again later")
		case err != nil:
			a.log.Error("history failed", "room", room, "err", err)
			s.Close(websocket.StatusInternalError, "internal error")
		default:
			s.SendJSON(ctx, chat.HistoryFrame(msgs))
		}
	})
	return nil
}

// post turns a say frame into a checked post to the socket's room.
func (a *app) post(s *wsconsumer.Session, in chat.In) (chat.Post, error) {
	if in.Type != "say" {
		return chat.Post{}, fmt.Errorf("unknown frame type %q", in.Type)
	}
	p := chat.Post{Room: s.State.(string), Author: in.Author, Body: in.Body}
	return p, p.Check()
}

// invalidFrame answers a frame that is not JSON and keeps the socket open.
func (a *app) invalidFrame(ctx context.Context, s *wsconsumer.Session, _ []byte, err error) error {
	return s.SendJSON(ctx, chat.ErrorFrame(errors.New("invalid JSON frame")))
}

func (a *app) leave(_ context.Context, s *wsconsumer.Session, _ websocket.StatusCode) {
	a.rooms.Leave(s)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
