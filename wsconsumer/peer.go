package wsconsumer

import (
	"net"
	"syscall"

	"github.com/dbscope/dbscope/internal/tcpstate"
)

// peerGone reports whether the client of c has closed its side of the
// TCP connection or reset it, from TCP_INFO, whatever data it sent before
// still waits unread. For a connection that is not TCP, or where TCP_INFO
// is not read (not Linux), it reports false: a paused socket's client
// that goes away is then noticed once its socket reads again.
func peerGone(c net.Conn) bool {
	sc, ok := bottom(c).(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var st tcpstate.State
	known := false
	if raw.Control(func(fd uintptr) { st, known = tcpstate.Of(fd) }) != nil || !known {
		return false
	}
	return st == tcpstate.Close || st == tcpstate.CloseWait
}

// bottom returns the connection c runs on, beneath TLS (nil for nil).
func bottom(c net.Conn) net.Conn {
	for {
		u, ok := c.(interface{ NetConn() net.Conn }) // *tls.Conn
		if !ok {
			return c
		}
		c = u.NetConn()
	}
}
