package middleware

import (
	"bufio"
	"net"
	"net/http"
	"strconv"

	"github.com/dbscope/dbscope/dbctx"
)

// timingWriter adds the Server-Timing header when the response header is
// written. It keeps http.Flusher and http.Hijacker, and Unwrap for
// http.ResponseController.
type timingWriter struct {
	http.ResponseWriter
	scope *dbctx.Scope
	wrote bool
}

func (w *timingWriter) WriteHeader(code int) {
	if !w.wrote && code >= 200 {
		w.wrote = true
		n, spent := w.scope.Timing()
		w.Header().Add("Server-Timing", serverTiming(n, spent.Seconds()*1000))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *timingWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	return w.ResponseWriter.Write(b)
}

func (w *timingWriter) Flush() {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *timingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(w.ResponseWriter).Hijack()
}

func (w *timingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func serverTiming(queries int, ms float64) string {
	b := make([]byte, 0, 48)
	b = append(b, "db;dur="...)
	b = strconv.AppendFloat(b, ms, 'f', 3, 64)
	b = append(b, `;desc="`...)
	b = strconv.AppendInt(b, int64(queries), 10)
	if queries == 1 {
		b = append(b, ` query"`...)
	} else {
		b = append(b, ` queries"`...)
	}
	return string(b)
}
