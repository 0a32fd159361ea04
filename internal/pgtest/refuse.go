package pgtest

import (
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Refuser is a server on 127.0.0.1 that speaks PostgreSQL's protocol as
// far as the startup message and answers every connection with a FATAL
// error of its SQLSTATE, as PostgreSQL does when it refuses a connection
// for a moment (57P03 the database system is starting up, 53300 too
// many connections): for tests of what a client makes of such a refusal,
// where the real condition cannot be had on demand.
type Refuser struct {
	ln   net.Listener
	resp *pgproto3.ErrorResponse
	wg   sync.WaitGroup
}

// NewRefuser starts a Refuser answering with code and message. It is
// closed when tb's test ends, with all its goroutines finished.
func NewRefuser(tb testing.TB, code, message string) *Refuser {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("pgtest: refuser listen: %v", err)
	}
	r := &Refuser{ln: ln, resp: &pgproto3.ErrorResponse{
		Severity: "FATAL", SeverityUnlocalized: "FATAL", Code: code, Message: message,
	}}
	r.wg.Add(1)
	go r.accept()
	tb.Cleanup(r.close)
	return r
}

// Addr returns the server's address, host:port.
func (r *Refuser) Addr() string { return r.ln.Addr().String() }

func (r *Refuser) close() {
	r.ln.Close()
	r.wg.Wait()
}

func (r *Refuser) accept() {
	defer r.wg.Done()
	for {
		c, err := r.ln.Accept()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go r.refuse(c)
	}
}

// refuse declines TLS and GSS encryption, as a server without them does,
// reads the startup message and answers it with the error.
func (r *Refuser) refuse(c net.Conn) {
	defer r.wg.Done()
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := pgproto3.NewBackend(c, c)
	for {
		msg, err := b.ReceiveStartupMessage()
		if err != nil {
			return
		}
		switch msg.(type) {
		case *pgproto3.SSLRequest, *pgproto3.GSSEncRequest:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return
			}
			continue
		case *pgproto3.StartupMessage:
			b.Send(r.resp)
			b.Flush()
		}
		return
	}
}
