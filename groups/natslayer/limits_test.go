package natslayer_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
	"github.com/dbscope/dbscope/groups/natslayer/natstest"
)

// Group names are checked; a message larger than the server's
// max_payload, or than what a subscription may hold, is refused with
// groups.ErrTooLarge; one of any bytes up to it arrives as sent.
func TestLimits(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	in := instances(t, srv, 1, nil)[0]
	small := instances(t, srv, 1, &natslayer.Options{PendingBytes: 64 << 10})[0]
	ctx := context.Background()
	l := in.layer
	for _, bad := range []string{"", "a b", "a*", "a>", "a|b", "a:b", "é", strings.Repeat("x", 101)} {
		if err := l.Send(ctx, bad, nil); !errors.Is(err, groups.ErrGroupName) {
			t.Errorf("Send to %q: %v, want ErrGroupName", bad, err)
		}
		m := l.NewMember(func(groups.Event) {}, nil)
		if err := m.Join(ctx, bad); !errors.Is(err, groups.ErrGroupName) {
			t.Errorf("Join %q: %v, want ErrGroupName", bad, err)
		}
		m.Close()
	}
	if got := in.engine.MaxPayload(); got != 1<<20 {
		t.Fatalf("MaxPayload %d, want the server's default max_payload, 1 MiB", got)
	}
	if got := small.engine.MaxPayload(); got != 64<<10 {
		t.Fatalf("MaxPayload %d, want PendingBytes, 64 KiB", got)
	}
	if err := l.Send(ctx, "big", bytes.Repeat([]byte("x"), 1<<20)); !errors.Is(err, groups.ErrTooLarge) {
		t.Errorf("1 MiB: %v, want ErrTooLarge (the envelope counts)", err)
	}
	if err := small.layer.Send(ctx, "big", bytes.Repeat([]byte("x"), 64<<10)); !errors.Is(err, groups.ErrTooLarge) {
		t.Errorf("64 KiB past PendingBytes: %v, want ErrTooLarge", err)
	}

	r := &recorder{}
	m := l.NewMember(r.handle, &groups.MemberOptions{MaxBytes: 2 << 20})
	defer m.Close()
	if err := m.Join(ctx, "bin.1"); err != nil {
		t.Fatal(err)
	}
	bin := []byte{0, 1, 2, 0xff, '|', 't', '.', '*', '>'}
	large := bytes.Repeat([]byte("é"), (1<<20-200)/2) // UTF-8 text, sent as it is
	for _, data := range [][]byte{bin, large} {
		if err := l.Send(ctx, "bin.1", data); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both messages", func() bool { return r.n.Load() == 2 })
	got := r.got()
	if !bytes.Equal(got[0].Data, bin) || !bytes.Equal(got[1].Data, large) || got[1].Group != "bin.1" {
		t.Fatalf("got %d and %d bytes", len(got[0].Data), len(got[1].Data))
	}
}
