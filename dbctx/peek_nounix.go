//go:build !unix

package dbctx

// dead cannot look into sockets here; pgx's ping after a second idle and
// the statement retry cover dead connections.
func (s *session) dead() bool { return false }
