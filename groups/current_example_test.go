package groups_test

import (
	"sync"

	"github.com/dbscope/dbscope/groups"
)

// A callback that waits before it acts on its event (here for a lock the
// member's owner holds while it leaves groups) asks Current once done
// waiting: an event of a group left meanwhile is dropped, as Leave
// promises.
func ExampleMember_Current() {
	var layer *groups.Layer // the application's
	var mu sync.Mutex       // held by the member's owner, around Leave too
	var m *groups.Member
	m = layer.NewMember(func(e groups.Event) {
		mu.Lock()
		defer mu.Unlock()
		if !m.Current() {
			return // its group was left while it waited
		}
		// … act on e
	}, nil)
	_ = m
}
