package wsconsumer

import (
	"bufio"
	"net"
	"net/http"
)

// hijackWriter is the http.ResponseWriter handed to websocket.Accept: it
// keeps the connection Accept hijacks, whose TCP state tells whether the
// client of a paused socket is gone (see Handler.tick).
type hijackWriter struct {
	http.ResponseWriter
	conn net.Conn
	err  error // the hijack's
}

func (w *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	w.conn, w.err = c, err
	return c, brw, err
}

// WriteHeaderNow forwards to gin's writer, which Accept calls it on.
func (w *hijackWriter) WriteHeaderNow() {
	if g, ok := w.ResponseWriter.(interface{ WriteHeaderNow() }); ok {
		g.WriteHeaderNow()
	}
}

func (w *hijackWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
