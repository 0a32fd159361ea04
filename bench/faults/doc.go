// Package faults is the system-level fault suite of dbscope: its tests run
// the item server of bench/internal/itemserver in-process against a real
// PostgreSQL, drive it with bench/internal/loadgen, and disturb it:
// backends terminated under load and while idle, PostgreSQL unreachable
// behind a TCP proxy, 20× more clients than slots, thousands of idle sockets
// beside active ones, and clients that never read. After every scenario
// the pool holds nothing, nothing is idle in a transaction and the
// goroutines are back to their count at the start.
//
//	go test -race -v ./bench/faults/
//
// The package has no code of its own besides this comment.
package faults
