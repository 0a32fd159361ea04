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
// failure is an error reply and the socket stays open.
func (s *Server) consumer() wsconsumer.Consumer {
	look, testOps, async := s.scopeLook, s.cfg.TestOps, s.cfg.Mode == "async"
	return wsconsumer.JSON(wsconsumer.JSONConsumer[Msg]{
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
	})
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
		m.Name = ""
		m.Error = err.Error()
	}
	return m
}

// scopeHTTP answers GET /items/{id} through the request's scope.
func (s *Server) scopeHTTP(w http.ResponseWriter, r *http.Request) {
	m, ok := parseHTTP(w, r, s.cfg.TestOps)
	if !ok {
		return
	}
	ctx := r.Context()
	err := s.scopeLook(ctx, dbctx.From(ctx), &m)
	if middleware.Answer(w, r, err) {
		return
	}
	writeHTTP(w, m, err)
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
