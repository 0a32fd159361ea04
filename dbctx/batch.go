package dbctx

import (
	"reflect"
	"unsafe"

	"github.com/jackc/pgx/v5/pgconn"
)

// A session keeps the buffers of its prefixed round trips (a tenant
// switch, a reset, Atomic's BEGIN, each with the statement after it) from
// one to the next, where a pgconn.Batch made anew grows its buffer and
// its two queues again for every one: seven allocations for a tenant
// switch's two statements, more for a reset's nine.
//
// pgconn.Batch has no method that empties it. batchLayout mirrors its
// fields; batchReuse says, from reflection at start-up, that the mirror
// matches the Batch of the pgx built in, field by field (name, type,
// offset). Where a pgx version changes the Batch, it does not match, and
// a batch is made anew each time, as before (TestBatchReuse fails, so
// that the mirror is brought up to date).

type batchLayout struct {
	buf                   []byte
	statementDescriptions []*pgconn.StatementDescription
	resultFormats         [][]int16
	err                   error
}

var batchReuse = sameLayout(reflect.TypeFor[pgconn.Batch](), reflect.TypeFor[batchLayout]())

// sameLayout reports whether structs a and b have the same fields, in the
// same places.
func sameLayout(a, b reflect.Type) bool {
	if a.Size() != b.Size() || a.NumField() != b.NumField() {
		return false
	}
	for i := range a.NumField() {
		fa, fb := a.Field(i), b.Field(i)
		if fa.Name != fb.Name || fa.Type != fb.Type || fa.Offset != fb.Offset {
			return false
		}
	}
	return true
}

// maxKeptBatch bounds the buffer a session keeps: a round trip that
// carried a larger statement (its parameters) gives its buffer up.
const maxKeptBatch = 16 << 10

// roundTrip returns c's round trip, emptied for another: the batch's
// buffers kept, nothing of the last one's statements or results held.
// There is one round trip at a time on a connection: the one before has
// been read to its end (result.finish) before another begins; where one
// is still being read (pgconn busy: a caller's mistake, which pgconn
// refuses), a new round trip is returned, and that one's reader keeps its
// statements.
func (c *session) roundTrip() *roundTrip {
	if c.pc != nil && c.pc.IsBusy() {
		return &roundTrip{}
	}
	rt := &c.rt
	rt.pl, rt.mrr = nil, nil
	if !batchReuse {
		rt.b = pgconn.Batch{}
		return rt
	}
	b := (*batchLayout)(unsafe.Pointer(&rt.b))
	if cap(b.buf) > maxKeptBatch {
		*b = batchLayout{}
		return rt
	}
	clear(b.statementDescriptions)
	clear(b.resultFormats)
	b.buf, b.statementDescriptions, b.resultFormats, b.err = b.buf[:0], b.statementDescriptions[:0], b.resultFormats[:0], nil
	return rt
}
