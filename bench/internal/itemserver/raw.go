package itemserver

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"

	"github.com/coder/websocket"
)

// rawSockets is the registry of the raw mode's sockets, the least a
// hand-written server needs for a graceful stop.
type rawSockets struct {
	mu      sync.Mutex
	conns   map[*websocket.Conn]struct{}
	closing bool
	active  sync.WaitGroup
}

func (r *rawSockets) add(c *websocket.Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closing {
		return false
	}
	r.conns[c] = struct{}{}
	r.active.Add(1)
	return true
}

func (r *rawSockets) remove(c *websocket.Conn) {
	r.mu.Lock()
	delete(r.conns, c)
	r.mu.Unlock()
	r.active.Done()
}

func (r *rawSockets) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns)
}

// shutdown closes every socket with 1001 and waits for their handlers, or
// for ctx; then closes what is left without a handshake.
func (r *rawSockets) shutdown(ctx context.Context) error {
	r.mu.Lock()
	r.closing = true
	conns := make([]*websocket.Conn, 0, len(r.conns))
	for c := range r.conns {
		conns = append(conns, c)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Go(func() { c.Close(websocket.StatusGoingAway, "server shutting down") })
	}
	done := make(chan struct{})
	go func() {
		wg.Wait()
		r.active.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		for _, c := range conns {
			c.CloseNow()
		}
		<-done
		return ctx.Err()
	}
}

// rawWS is the baseline websocket handler: coder/websocket and a plain
// *sql.DB, one goroutine per socket reading, querying and writing in
// turn, as wsconsumer's bench_test.go baseline. With Config.Tenant the
// socket's tenant is the upgrade request's ?tenant=.
func (s *Server) rawWS() http.Handler {
	look, testOps := s.rawLook, s.cfg.TestOps
	if s.cfg.Write {
		look = s.rawWrite
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t, ok := s.rawTenant(w, r)
		if !ok {
			return
		}
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		if !s.raw.add(c) {
			c.Close(websocket.StatusGoingAway, "server shutting down")
			return
		}
		defer s.raw.remove(c)
		ctx := context.WithoutCancel(r.Context())
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				return
			}
			var m Msg
			if typ != websocket.MessageText || json.Unmarshal(data, &m) != nil {
				c.Close(websocket.StatusInvalidFramePayloadData, "invalid JSON")
				return
			}
			out, _ := json.Marshal(answer(m, look(ctx, t, &m), testOps))
			if err := c.Write(ctx, websocket.MessageText, out); err != nil {
				return
			}
		}
	})
}

// rawHTTP answers /items/{id} with work on the plain *sql.DB (or
// pgxpool).
func (s *Server) rawHTTP(work func(ctx context.Context, tenant string, m *Msg) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t, ok := s.rawTenant(w, r)
		if !ok {
			return
		}
		m, ok := parseHTTP(w, r, s.cfg.TestOps)
		if !ok {
			return
		}
		writeHTTP(w, m, work(r.Context(), t, &m))
	}
}

// rawTenant returns the tenant of a request (?tenant=) with Config.Tenant,
// answering 400 where it names none; "" without Config.Tenant.
func (s *Server) rawTenant(w http.ResponseWriter, r *http.Request) (string, bool) {
	if !s.cfg.Tenant {
		return "", true
	}
	t := r.URL.Query().Get("tenant")
	if t == "" {
		writeJSON(w, http.StatusBadRequest, Msg{Error: "tenant: missing"})
		return "", false
	}
	return t, true
}
