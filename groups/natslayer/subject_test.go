package natslayer_test

import (
	"strings"
	"testing"

	"github.com/dbscope/dbscope/groups"
	"github.com/dbscope/dbscope/groups/natslayer"
)

func TestSubject(t *testing.T) {
	for _, c := range []struct{ prefix, group, want string }{
		{"dbscope", "room", "dbscope.g.room"},
		{"dbscope", "room.42", "dbscope.g.room:42"},
		{"app.v1", "a.b.c", "app.v1.g.a:b:c"},
		{"p", "-_.", "p.g.-_:"},
		{"p", ".", "p.g.:"},
	} {
		if got := natslayer.Subject(c.prefix, c.group); got != c.want {
			t.Errorf("Subject(%q, %q) = %q, want %q", c.prefix, c.group, got, c.want)
		}
	}
}

// Two valid group names never share a subject, and a group's subject is
// the prefix's tokens and two more, with no wildcard or whitespace.
func FuzzSubject(f *testing.F) {
	f.Add("room.42", "room:42")
	f.Add("a.b", "a_b")
	f.Add("..", ".")
	f.Fuzz(func(t *testing.T, a, b string) {
		if groups.CheckGroup(a) != nil || groups.CheckGroup(b) != nil {
			return
		}
		sa, sb := natslayer.Subject("x.y", a), natslayer.Subject("x.y", b)
		if a != b && sa == sb {
			t.Fatalf("%q and %q share %q", a, b, sa)
		}
		tokens := strings.Split(sa, ".")
		if len(tokens) != 4 || tokens[3] == "" || strings.ContainsAny(sa, "*> \t\r\n") {
			t.Fatalf("%q: subject %q", a, sa)
		}
	})
}
