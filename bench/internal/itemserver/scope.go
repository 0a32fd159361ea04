package itemserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/middleware"
	"github.com/dbscope/dbscope/wsconsumer"
)

// consumer is the websocket consumer of the dbscope modes. In the sync
// style it queries the socket's scope; in the async style it goes through
// dbctx.Do. A refusal of the pool ends the socket with 1013; any other
// failure is an error reply and the socket stays open. With Config.Tenant
// Connect declares the socket's tenant (?tenant=) for its life, and
// refuses a socket that names none.
func (s *Server) consumer() wsconsumer.Consumer {
	look, testOps, async := s.scopeLook, s.cfg.TestOps, s.cfg.Mode == "async"
	if s.cfg.Write {
		look = s.scopeWrite
	}
	c := wsconsumer.JSONConsumer[Msg]{
		Receive: func(ctx context.Context, ss *wsconsumer.Session, m Msg) error {
			var err error
			if async {
				err = dbctx.Do(ctx, func(ctx context.Context, sc *dbctx.Scope) error {
					return look(ctx, sc, &m)
				})
			} else {
				err = look(ctx, dbctx.From(ctx), &m)
			}
			if errors.Is(err, dbctx.ErrBusy) {
				return err
			}
			return ss.SendJSON(ctx, answer(m, err, testOps))
		},
	}
	if s.cfg.Tenant {
		setting := tenantSetting()
		c.Connect = func(ctx context.Context, ss *wsconsumer.Session) error {
			t := ss.Request().URL.Query().Get("tenant")
			if t == "" {
				return wsconsumer.Reject(http.StatusBadRequest, "tenant: missing")
			}
			ss.AddValues(func(ctx context.Context) context.Context { return setting.With(ctx, t) })
			return nil
		}
	}
	return wsconsumer.JSON(c)
}

// answer is reply for a websocket message, padded as asked with testOps.
func answer(m Msg, err error, testOps bool) Msg {
	pad := m.Pad
	m = reply(m, err)
	if testOps && pad > 0 {
		m.Padding = strings.Repeat("x", min(pad, maxPad))
	}
	return m
}

// reply is m answered: its name, or the error and no name.
func reply(m Msg, err error) Msg {
	m.Sleep, m.Pad = 0, 0
	if err != nil {
		m.Name, m.Tenant, m.Row = "", "", 0
		m.Error = err.Error()
	}
	return m
}

// itemHandler answers /items/{id} with work on the request's scope:
// inside middleware.Atomic in the atomic mode, and with Config.Tenant
// after tenantHTTP, which declares the request's tenant (before Atomic,
// whose BEGIN runs with it).
func (s *Server) itemHandler(work func(ctx context.Context, sc *dbctx.Scope, m *Msg) error) http.Handler {
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m, ok := parseHTTP(w, r, s.cfg.TestOps)
		if !ok {
			return
		}
		ctx := r.Context()
		err := work(ctx, dbctx.From(ctx), &m)
		if middleware.Answer(w, r, err) {
			return
		}
		writeHTTP(w, m, err)
	})
	if s.cfg.Mode == "atomic" {
		h = middleware.AtomicWithOpts(&middleware.AtomicOptions{Logger: s.cfg.Logger})(h)
	}
	if s.cfg.Tenant {
		h = tenantHTTP(h)
	}
	return h
}

// parseHTTP reads the id (and, with testOps, ?sleep=) of an item request,
// answering 400 when it is not a number.
func parseHTTP(w http.ResponseWriter, r *http.Request, testOps bool) (Msg, bool) {
	id, err := strconv.Atoi(r.PathValue("id"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, Msg{Error: "id: not a number"})
		return Msg{}, false
	}
	m := Msg{ID: id}
	if sl := r.URL.Query().Get("sleep"); testOps && sl != "" {
		if m.Sleep, err = strconv.ParseFloat(sl, 64); err != nil {
			writeJSON(w, http.StatusBadRequest, Msg{ID: id, Error: "sleep: not a number"})
			return Msg{}, false
		}
	}
	return m, true
}

// writeHTTP answers an item request: 200, or 500 with the error.
func writeHTTP(w http.ResponseWriter, m Msg, err error) {
	status := http.StatusOK
	if err != nil {
		status = http.StatusInternalServerError
	}
	writeJSON(w, status, reply(m, err))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}
