package wsconsumer_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/coder/websocket"
	"github.com/dbscope/dbscope/internal/dbtest"
	"github.com/dbscope/dbscope/wsconsumer"
)

// A Send whose write meets the connection reset by the client (or cut
// by the network) before the socket's reader noticed returns ErrClosed,
// wrapping the write's error, as the doc of ErrClosed says: code that
// prunes its closed sessions by it (a broadcast over a map of them) saw
// "connection reset by peer" instead.
func TestSendAfterReset(t *testing.T) {
	t.Parallel()
	p, _ := dbtest.NewPool(t, nil)
	started, release := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	h := wsconsumer.NewAsync(p, wsconsumer.Consumer{
		Receive: func(ctx context.Context, s *wsconsumer.Session, _ websocket.MessageType, data []byte) error {
			close(started)
			<-release
			var err error
			for i := 0; i < 100 && err == nil; i++ {
				err = s.Send(context.Background(), websocket.MessageBinary, make([]byte, 64<<10))
			}
			errc <- err
			return nil
		},
	}, &wsconsumer.Options{Logger: quiet()})
	url := serve(t, h)
	c, _ := rawUpgrade(t, url)
	c.Write(clientFrame(0x1, true, true, []byte("x")))
	<-started
	c.(*net.TCPConn).SetLinger(0) // the close resets the connection
	c.Close()
	close(release)
	err := <-errc
	if !errors.Is(err, wsconsumer.ErrClosed) {
		t.Errorf("Send after the client reset: %v, want ErrClosed", err)
	}
}
