// Package chatserver is the chat application that examples/chi and
// examples/nethttp serve: its handlers and websocket consumers, which show
// dbscope at work, and its start-up and shutdown. Each example's main.go
// routes it, on chi or on http.ServeMux; package chat holds what is not
// about dbscope.
package chatserver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/examples/internal/chat"
	"github.com/dbscope/dbscope/internal/pgserver"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver
)

// Config is what Run needs; tests fill it in with their own database and
// listener.
type Config struct {
	Addr     string       // where to listen, when Listener is nil
	Listener net.Listener // taken over by Run, if set
	DSN      string       // "": $DATABASE_URL, else the local server, else a throwaway cluster
	Log      *slog.Logger
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

	a := &App{Pool: pool, Log: log, Rooms: chat.NewRooms(log)}
	wsOpts := &wsconsumer.Options{Logger: log}
	a.SyncWS = wsconsumer.NewSync(pool, a.syncConsumer(), wsOpts)
	a.AsyncWS = wsconsumer.NewAsync(pool, a.asyncConsumer(), wsOpts)
	a.Atomic = middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: log})
	srv := &http.Server{
		Handler:           routes(a),
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
	for _, h := range []*wsconsumer.Handler{a.SyncWS, a.AsyncWS} {
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

// App holds the handlers, the websocket endpoints and the sockets of each
// room, for routes to mount.
type App struct {
	Pool    *dbctx.Pool
	Log     *slog.Logger
	Rooms   *chat.Rooms
	SyncWS  *wsconsumer.Handler // /ws/sync?room=, the sync style
	AsyncWS *wsconsumer.Handler // /ws/async?room=, the async style
	// Atomic is middleware.Atomic for POST /api/messages: it commits
	// before the 201 goes out, and dbctx.OnCommit pushes then.
	Atomic func(http.Handler) http.Handler
	// RequestAttrs, if set, adds the router's own request attributes
	// (request ID, client) to the log of a failed request.
	RequestAttrs func(*http.Request) []any
}

// Stats answers GET /debug/dbstats with the pool's statistics.
func (a *App) Stats(w http.ResponseWriter, r *http.Request) {
	chat.WriteJSON(w, http.StatusOK, a.Pool.Stats())
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
	if err != nil {
		a.fail(w, r, err)
		return
	}
	// Pushed only once committed: a socket never shows a message that
	// GET /api/messages does not.
	dbctx.OnCommit(ctx, func() { a.Rooms.Broadcast(m.Room, chat.MessageFrame(m)) })
	chat.WriteJSON(w, http.StatusCreated, m)
}

// fail answers a database error: 503 with Retry-After on overload, else
// 500 with the detail only in the log.
func (a *App) fail(w http.ResponseWriter, r *http.Request, err error) {
	if middleware.Busy(w, err) {
		return
	}
	attrs := []any{"method", r.Method, "path", r.URL.Path}
	if a.RequestAttrs != nil {
		attrs = append(attrs, a.RequestAttrs(r)...)
	}
	a.Log.Error("request failed", append(attrs, "err", err)...)
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
			m, err := chat.Insert(ctx, dbctx.From(ctx), p)
			if err != nil {
				return err // closes with 1011, or 1013 when busy
			}
			a.Rooms.Broadcast(m.Room, chat.MessageFrame(m))
			return nil
		},
		Invalid:    a.invalidFrame,
		Disconnect: a.leave,
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
			m, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) (chat.Message, error) {
				return chat.Insert(ctx, db, p)
			})
			if err != nil {
				return err
			}
			a.Rooms.Broadcast(m.Room, chat.MessageFrame(m))
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
func (a *App) connect(_ context.Context, s *wsconsumer.Session) error {
	room, err := chat.CheckRoom(s.Request().URL.Query().Get("room"))
	if err != nil {
		return wsconsumer.Reject(http.StatusBadRequest, err.Error())
	}
	s.State = room
	s.Go(func(ctx context.Context) {
		a.Rooms.Join(room, s)
		msgs, err := dbctx.DoValue(ctx, func(ctx context.Context, db *dbctx.Scope) ([]chat.Message, error) {
			return chat.History(ctx, db, room)
		})
		switch {
		case errors.Is(err, dbctx.ErrBusy):
			s.Close(websocket.StatusTryAgainLater, "try again later")
		case err != nil:
			a.Log.Error("history failed", "room", room, "err", err)
			s.Close(websocket.StatusInternalError, "internal error")
		default:
			s.SendJSON(ctx, chat.HistoryFrame(msgs))
		}
	})
	return nil
}

// post turns a say frame into a checked post to the socket's room.
func (a *App) post(s *wsconsumer.Session, in chat.In) (chat.Post, error) {
	if in.Type != "say" {
		return chat.Post{}, fmt.Errorf("unknown frame type %q", in.Type)
	}
	p := chat.Post{Room: s.State.(string), Author: in.Author, Body: in.Body}
	return p, p.Check()
}

// invalidFrame answers a frame that is not JSON and keeps the socket open.
func (a *App) invalidFrame(ctx context.Context, s *wsconsumer.Session, _ []byte, err error) error {
	return s.SendJSON(ctx, chat.ErrorFrame(errors.New("invalid JSON frame")))
}

func (a *App) leave(_ context.Context, s *wsconsumer.Session, _ websocket.StatusCode) {
	a.Rooms.Leave(s)
}

// EnvOr returns the environment variable key, or def where it is unset.
func EnvOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
