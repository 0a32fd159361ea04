package groups_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"

	"github.com/dbscope/dbscope/groups"
)

// One process: the memory engine needs nothing. A member gets the
// messages of its groups one at a time, in the order a sender sent them.
func ExampleNewMemory() {
	layer, err := groups.New(groups.NewMemory(), nil)
	if err != nil {
		log.Fatal(err)
	}
	defer layer.Close()

	got := make(chan groups.Event)
	m := layer.NewMember(func(e groups.Event) { got <- e }, nil)
	defer m.Close()
	ctx := context.Background()
	if err := m.Join(ctx, "room.42"); err != nil {
		log.Fatal(err)
	}
	for _, text := range []string{"hi", "bye"} {
		if err := layer.Send(ctx, "room.42", []byte(text)); err != nil {
			log.Fatal(err)
		}
	}
	for range 2 {
		e := <-got
		fmt.Println(e.Group, string(e.Data), e.Gap)
	}

	// Group names are 1 to 100 letters, digits, '-', '_' or '.'.
	for _, g := range []string{"room 42", strings.Repeat("r", 101), ""} {
		fmt.Println(errors.Is(layer.Send(ctx, g, nil), groups.ErrGroupName))
	}
	// Output:
	// room.42 hi false
	// room.42 bye false
	// true
	// true
	// true
}
