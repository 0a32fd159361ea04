package natslayer_test

import (
	"context"
	"fmt"
	"log"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/nats-io/nats.go"
)

// Two instances of a service, each with its own connection to NATS,
// share a group: a message sent on one reaches the members on both.
func Example() {
	// A nats-server of the example's own, in place of yours.
	srv, err := natstest.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()

	ctx := context.Background()
	got := make(chan string, 2)
	var layers []*groups.Layer
	for i := range 2 {
		engine, err := natslayer.Connect(srv.URL, &natslayer.Options{Name: fmt.Sprintf("instance-%d", i)})
		if err != nil {
			log.Fatal(err)
		}
		layer, err := groups.New(engine, nil) // starts the engine; Close closes it
		if err != nil {
			log.Fatal(err)
		}
		defer layer.Close()
		m := layer.NewMember(func(e groups.Event) {
			got <- fmt.Sprintf("instance %d: %s %s", i, e.Group, e.Data)
		}, nil)
		defer m.Close()
		if err := m.Join(ctx, "room.42"); err != nil { // subscribed at the server once it returns
			log.Fatal(err)
		}
		layers = append(layers, layer)
	}
	if err := layers[0].Send(ctx, "room.42", []byte("hi")); err != nil {
		log.Fatal(err)
	}
	a, b := <-got, <-got
	fmt.Println(min(a, b))
	fmt.Println(max(a, b))
	// Output:
	// instance 0: room.42 hi
	// instance 1: room.42 hi
}

// New runs the engine over a connection of the caller's, set up to
// reconnect forever with a bounded buffer; the engine leaves it open.
func ExampleNew() {
	srv, err := natstest.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Stop()

	nc, err := nats.Connect(srv.URL, nats.MaxReconnects(-1), nats.ReconnectBufSize(8<<20))
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	engine := natslayer.New(nc, &natslayer.Options{Prefix: "chat"})
	layer, err := groups.New(engine, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()
	fmt.Println(natslayer.Subject("chat", "room.42"), engine.MaxPayload(), layer.Ready())
	// Output: chat.g.room:42 1048576 <nil>
}
