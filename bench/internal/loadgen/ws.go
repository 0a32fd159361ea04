package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// reply is the JSON of an answer.
type reply struct {
	ID     int    `json:"id"`
	Name   string `json:"name"`
	Error  string `json:"error"`
	Tenant string `json:"tenant"`
	Row    int64  `json:"row"`
}

func wsURL(base string) string {
	return "ws" + strings.TrimPrefix(base, "http") + "/ws/items"
}

func request(id int, sleep float64) []byte {
	b := []byte(`{"id":` + strconv.Itoa(id))
	if sleep > 0 {
		b = append(b, `,"sleep":`...)
		b = strconv.AppendFloat(b, sleep, 'g', -1, 64)
	}
	return append(b, '}')
}

// wsDriver runs each client over one websocket, sending a message and
// reading its answer in turn. A socket the server closes with 1013 counts
// as busy, any other failure as broken; either way the client dials again
// and goes on with its next message.
type wsDriver struct{ cfg Config }

func (d *wsDriver) close() {}

func (d *wsDriver) client(ctx context.Context, stop <-chan struct{}, r *run, c int) []time.Duration {
	lat := make([]time.Duration, 0, min(d.cfg.Messages, 1<<14))
	url := wsURL(d.cfg.URL) + d.cfg.query(c)
	var conn *websocket.Conn
	defer func() {
		if conn != nil {
			conn.Close(websocket.StatusNormalClosure, "")
		}
	}()
	for i := range d.cfg.Messages {
		if stopped(ctx, stop) {
			break
		}
		if conn == nil {
			var err error
			if conn, err = dial(ctx, url, d.cfg.Timeout); err != nil {
				r.dialErrors.Add(1)
				r.note("client %d: dial: %v", c, err)
				continue
			}
		}
		id := r.id(c, i)
		start := time.Now()
		data, err := roundTrip(ctx, conn, request(id, d.cfg.Sleep), d.cfg.Timeout)
		if err != nil {
			conn.CloseNow()
			conn = nil
			switch {
			case websocket.CloseStatus(err) == websocket.StatusTryAgainLater:
				r.busy.Add(1)
			case errors.Is(err, errHung):
				r.hung.Add(1)
				r.broken.Add(1)
				r.note("client %d: message %d: no answer within %v", c, i, d.cfg.Timeout)
			default:
				r.broken.Add(1)
				r.note("client %d: message %d: %v", c, i, err)
			}
			continue
		}
		lat = append(lat, time.Since(start))
		r.check(c, id, data)
	}
	return lat
}

// check counts an answer of client c to item id: an error reply, or a
// wrong one: not item-<id> (with Write: no row id), or, with Tenants, not
// of the client's tenant.
func (r *run) check(c, id int, data []byte) {
	var m reply
	if err := json.Unmarshal(data, &m); err != nil {
		r.wrong.Add(1)
		r.note("client %d: id %d: bad reply %q", c, id, data)
		return
	}
	switch {
	case m.Error != "":
		r.errorReplies.Add(1)
		r.note("client %d: id %d: error reply: %s", c, id, m.Error)
	case m.ID != id || r.cfg.Write && m.Row <= 0 || !r.cfg.Write && m.Name != "item-"+strconv.Itoa(id):
		r.wrong.Add(1)
		r.note("client %d: id %d: wrong reply %q", c, id, data)
	case m.Tenant != r.cfg.tenant(c):
		r.wrongTenants.Add(1)
		r.note("client %d: id %d: wrong tenant, want %q: %q", c, id, r.cfg.tenant(c), data)
	}
}

var errHung = errors.New("loadgen: no answer in time")

// roundTrip writes msg and reads the answer. A watchdog, not a context
// per message, bounds the wait: a cancelable context would cost
// coder/websocket work on every read, in the driver that shares the
// machine with the server.
func roundTrip(ctx context.Context, conn *websocket.Conn, msg []byte, timeout time.Duration) ([]byte, error) {
	var fired atomic.Bool
	t := time.AfterFunc(timeout, func() {
		fired.Store(true)
		conn.CloseNow()
	})
	defer t.Stop()
	err := conn.Write(ctx, websocket.MessageText, msg)
	var data []byte
	if err == nil {
		_, data, err = conn.Read(ctx)
	}
	if err != nil && fired.Load() {
		return nil, errHung
	}
	return data, err
}

func dial(ctx context.Context, url string, timeout time.Duration) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %d)", err, resp.StatusCode)
		}
		return nil, err
	}
	return c, nil
}

// OpenIdle opens n websockets to the server at base (http://host:port),
// each after one message answered, 16 dials at a time. On error it also
// returns the sockets it opened, for the caller to close.
func OpenIdle(ctx context.Context, base string, n int, timeout time.Duration) ([]*websocket.Conn, error) {
	return openIdle(ctx, Config{URL: strings.TrimSuffix(base, "/"), Timeout: timeout}, n)
}

// openIdle is OpenIdle for the server of cfg: with Tenants, idle socket i
// is a socket of tenant i%Tenants+1.
func openIdle(ctx context.Context, cfg Config, n int) ([]*websocket.Conn, error) {
	if n == 0 {
		return nil, nil
	}
	url, timeout := wsURL(cfg.URL), cfg.Timeout
	conns := make([]*websocket.Conn, n)
	var next atomic.Int64
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range min(16, n) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				c, err := dial(ctx, url+cfg.query(i), timeout)
				if err == nil {
					conns[i] = c
					_, err = roundTrip(ctx, c, request(i%10000+1, 0), timeout)
				}
				if err != nil {
					mu.Lock()
					firstErr = cmpOr(firstErr, fmt.Errorf("loadgen: idle socket %d: %w", i, err))
					mu.Unlock()
					next.Store(int64(n)) // stop the others
					return
				}
			}
		})
	}
	wg.Wait()
	out := conns[:0]
	for _, c := range conns {
		if c != nil {
			out = append(out, c)
		}
	}
	return out, firstErr
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// stopped reports whether the run is over for a client.
func stopped(ctx context.Context, stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return ctx.Err() != nil
	}
}
