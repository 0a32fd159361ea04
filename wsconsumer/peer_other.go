//go:build !linux

package wsconsumer

import "net"

// peerGone reports false: where TCP_INFO is not read, a paused socket's
// client that goes away is noticed once its socket reads again.
func peerGone(net.Conn) bool { return false }
