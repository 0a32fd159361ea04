package natslayer_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
	"github.com/nats-io/nats.go"
)

// While the server is down, sends go into the reconnect buffer, counted,
// until it is full; then Send fails with nats.ErrReconnectBufExceeded,
// counted too. On reconnection what was buffered is sent: the sender's
// own members get all of it (nats.go subscribes again before it sends the
// buffer), other instances' what arrived once they were subscribed again,
// and a gap. With no buffer, every send fails while down.
func TestPublishWhileDown(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	const buffer, size = 16 << 10, 1 << 10
	ins := instances(t, srv, 2, &natslayer.Options{ReconnectBuffer: buffer})
	none := instances(t, srv, 1, &natslayer.Options{ReconnectBuffer: -1})[0]
	none.name = "unbuffered"
	ctx := context.Background()
	here, there := &recorder{}, &recorder{}
	for i, r := range []*recorder{here, there} {
		m := ins[i].layer.NewMember(r.handle, nil)
		defer m.Close()
		if err := m.Join(ctx, "buf"); err != nil {
			t.Fatal(err)
		}
	}
	if err := ins[0].layer.Send(ctx, "buf", payload("s", 0, size)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the first message", func() bool { return here.n.Load() == 1 && there.n.Load() == 1 })

	srv.Kill(t)
	for _, in := range append(ins, none) {
		eventually(t, in.name+" to see the connection down", func() bool { return in.engine.Stats().Disconnects == 1 })
	}
	var accepted []string
	refused := 0
	for seq := 1; refused < 3; seq++ {
		if seq > 100 {
			t.Fatalf("%d KiB taken into a buffer of %d KiB", seq, buffer>>10)
		}
		p := payload("s", seq, size)
		switch err := ins[0].layer.Send(ctx, "buf", p); {
		case err == nil && refused == 0:
			accepted = append(accepted, string(p))
		case errors.Is(err, nats.ErrReconnectBufExceeded):
			refused++
		default:
			t.Fatalf("send %d, after %d refused: %v", seq, refused, err)
		}
	}
	if err := none.layer.Send(ctx, "buf", nil); !errors.Is(err, nats.ErrReconnectBufExceeded) {
		t.Fatalf("send without a buffer while down: %v", err)
	}
	st := ins[0].engine.Stats()
	if st.Buffered != int64(len(accepted)) || st.PublishErrors != int64(refused) {
		t.Fatalf("stats %+v; %d accepted, %d refused", st, len(accepted), refused)
	}
	t.Logf("while down: %d sends of %d bytes buffered, then refused", len(accepted), size)

	srv.Restart(t)
	want := append([]string{string(payload("s", 0, size))}, accepted...)
	eventually(t, "the buffered messages at the sender's own member", func() bool { return here.n.Load() == int64(len(want)) })
	if got := here.messages(); !slices.Equal(got, want) {
		t.Fatalf("the sender's member got %d messages, want the %d accepted", len(got), len(want))
	}
	for i, r := range []*recorder{here, there} {
		eventually(t, fmt.Sprintf("the gap at instance %d", i), func() bool { return r.gaps.Load() == 1 })
	}
	got := there.messages()
	if !isSubsequence(got, want) {
		t.Fatalf("the other instance's member got %d messages, not among those accepted in order", len(got))
	}
	t.Logf("the other instance's member got %d of the %d buffered", len(got)-1, len(accepted))
}

// isSubsequence reports whether sub is a subsequence of s.
func isSubsequence(sub, s []string) bool {
	i := 0
	for _, x := range s {
		if i < len(sub) && sub[i] == x {
			i++
		}
	}
	return i == len(sub)
}
