package loadgen

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"time"
)

// httpDriver runs each client as GET /items/{id} requests (POST with
// Config.Write) in turn, over keep-alive connections (one per client).
type httpDriver struct {
	cfg Config
	tr  *http.Transport
	c   *http.Client
}

func newHTTPDriver(cfg Config) *httpDriver {
	tr := &http.Transport{
		MaxIdleConns:        cfg.Clients,
		MaxIdleConnsPerHost: cfg.Clients,
		DisableCompression:  true,
	}
	return &httpDriver{cfg: cfg, tr: tr, c: &http.Client{Transport: tr, Timeout: cfg.Timeout}}
}

func (d *httpDriver) close() { d.tr.CloseIdleConnections() }

func (d *httpDriver) client(ctx context.Context, stop <-chan struct{}, r *run, c int) []time.Duration {
	lat := make([]time.Duration, 0, min(d.cfg.Messages, 1<<14))
	buf := make([]byte, 0, 512)
	query, sep, method := d.cfg.query(c), "?", "GET"
	if query != "" {
		sep = "&"
	}
	if d.cfg.Write {
		method = "POST"
	}
	for i := range d.cfg.Messages {
		if stopped(ctx, stop) {
			break
		}
		id := r.id(c, i)
		url := d.cfg.URL + "/items/" + strconv.Itoa(id) + query
		if d.cfg.Sleep > 0 {
			url += sep + "sleep=" + strconv.FormatFloat(d.cfg.Sleep, 'g', -1, 64)
		}
		req, _ := http.NewRequestWithContext(ctx, method, url, nil)
		start := time.Now()
		resp, err := d.c.Do(req)
		if err == nil {
			buf, err = readAll(resp.Body, buf[:0])
			resp.Body.Close()
		}
		if err != nil {
			r.broken.Add(1)
			var ue interface{ Timeout() bool }
			if errors.As(err, &ue) && ue.Timeout() {
				r.hung.Add(1)
			}
			r.note("client %d: id %d: %v", c, id, err)
			continue
		}
		switch resp.StatusCode {
		case http.StatusServiceUnavailable:
			r.busy.Add(1)
			continue
		case http.StatusOK:
			lat = append(lat, time.Since(start))
			r.check(c, id, buf)
		case http.StatusInternalServerError:
			// The item's error, or middleware.Atomic's plain-text answer
			// to a failed commit.
			lat = append(lat, time.Since(start))
			r.errorReplies.Add(1)
			r.note("client %d: id %d: HTTP 500: %s", c, id, bytes.TrimSpace(buf))
		default:
			r.wrong.Add(1)
			r.note("client %d: id %d: HTTP %d: %s", c, id, resp.StatusCode, buf)
		}
	}
	return lat
}

func readAll(r io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}
