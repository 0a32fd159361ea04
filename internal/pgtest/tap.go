package pgtest

import (
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
)

// Tap follows one connection through a [Proxy] from the moment it was
// set ([Proxy.Tap]): the bytes that went each way and where each message
// began. Armed ([Tap.At]), it holds the connection's bytes at one point
// of that exchange and does something there (cut the connection,
// terminate its backend, cancel a context) before they go on. A sweep
// runs a unit of work once to learn its exchange ([Tap.Points]), then
// once per point with a fault there.
type Tap struct {
	l *link

	mu    sync.Mutex
	dirs  [2]tapDir // from the client, from the server
	at    Point
	do    func()
	armed bool
	fired bool
}

// Point is a place in a connection's exchange: once Offset bytes have
// gone from the server to the client (FromServer), or from the client to
// the server, counted from the Tap's start.
type Point struct {
	FromServer bool
	Offset     int64
}

// tapDir follows the messages of one direction, each a type byte and a
// length (the connection is past its startup, and never on TLS).
type tapDir struct {
	n      int64   // bytes forwarded
	starts []int64 // offsets where messages began
	lens   []int64 // their lengths, type byte included
	types  []byte
	head   [5]byte
	have   int
	left   int64
}

func (d *tapDir) record(b []byte) {
	for len(b) > 0 {
		if d.left > 0 {
			k := min(d.left, int64(len(b)))
			d.left -= k
			d.n += k
			b = b[k:]
			continue
		}
		if d.have == 0 {
			d.starts = append(d.starts, d.n)
		}
		k := copy(d.head[d.have:], b)
		d.have += k
		d.n += int64(k)
		b = b[k:]
		if d.have < len(d.head) {
			return
		}
		size := int64(binary.BigEndian.Uint32(d.head[1:]))
		d.lens = append(d.lens, size+1)
		d.types = append(d.types, d.head[0])
		d.left = size - 4
		d.have = 0
	}
}

// Tap starts following the proxy's one live connection: it fails tb
// where there is not exactly one.
func (p *Proxy) Tap(tb testing.TB) *Tap {
	tb.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.links) != 1 {
		tb.Fatalf("pgtest: Tap: %d connections through the proxy, want 1", len(p.links))
	}
	t := &Tap{}
	for l := range p.links {
		t.l = l
		l.tap.Store(t)
	}
	return t
}

// At arms t: once the connection's bytes reach pt, they are held while
// f runs, on the goroutine that forwards them, then go on (unless f cut
// the connection, [Tap.Cut]). f runs at most once. A point the exchange
// never reaches does nothing ([Tap.Fired] says).
func (t *Tap) At(pt Point, f func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.at, t.do, t.armed, t.fired = pt, f, true, false
}

// Fired reports whether the point given to [Tap.At] was reached.
func (t *Tap) Fired() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fired
}

// Stop disarms t and stops following the connection: what the point of
// [Tap.At] was not reached by is left alone.
func (t *Tap) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.armed = false
	t.l.tap.CompareAndSwap(t, nil)
}

// String lists the messages of the exchange so far, each way: their
// types and lengths, for a test's log.
func (t *Tap) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	for i, who := range []string{"client", "server"} {
		d := &t.dirs[i]
		fmt.Fprintf(&b, "%s (%d bytes):", who, d.n)
		for j := range d.lens {
			fmt.Fprintf(&b, " %c%d", d.types[j], d.lens[j])
		}
		b.WriteString("\n")
	}
	return b.String()
}

// Cut closes the tapped connection, both ways, as a network cut would.
func (t *Tap) Cut() { t.l.shut() }

// Bytes returns how many bytes went each way since the Tap's start.
func (t *Tap) Bytes() (fromClient, fromServer int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.dirs[0].n, t.dirs[1].n
}

// Points returns the points of the exchange so far worth a fault, in
// both directions: every message's start, a point inside its header, one
// in the middle of its body, and the end of the exchange.
func (t *Tap) Points() []Point {
	t.mu.Lock()
	defer t.mu.Unlock()
	var pts []Point
	for i, fromServer := range []bool{false, true} {
		d := &t.dirs[i]
		var offs []int64
		for j, start := range d.starts {
			offs = append(offs, start, start+1)
			if j < len(d.lens) && d.lens[j] > 6 {
				offs = append(offs, start+d.lens[j]/2)
			}
		}
		offs = append(offs, d.n)
		slices.Sort(offs)
		for _, o := range slices.Compact(offs) {
			if o <= d.n {
				pts = append(pts, Point{FromServer: fromServer, Offset: o})
			}
		}
	}
	return pts
}

// feed records data, bytes read one way, and returns how many of them
// to forward now and what to do once they are: the armed point's f,
// where they reach it (then the rest comes back in the next call).
func (t *Tap) feed(fromServer bool, data []byte) (int, func()) {
	t.mu.Lock()
	defer t.mu.Unlock()
	i := 0
	if fromServer {
		i = 1
	}
	d := &t.dirs[i]
	k := len(data)
	act := func() {}
	if t.armed && !t.fired && t.at.FromServer == fromServer && t.at.Offset-d.n <= int64(k) {
		k = int(max(t.at.Offset-d.n, 0))
		t.fired = true
		act = t.do
	}
	d.record(data[:k])
	return k, act
}
