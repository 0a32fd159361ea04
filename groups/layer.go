package groups

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/dbscope/dbscope/dbctx"
	"github.com/dbscope/dbscope/internal/logattrs"
	"github.com/dbscope/dbscope/internal/scopes"
)

var (
	// ErrGroupName is returned for a group name that is not 1 to 100
	// ASCII letters, digits, '-', '_' or '.' (Channels' characters;
	// Channels takes names of fewer than 100).
	ErrGroupName = errors.New("groups: invalid group name: want 1 to 100 ASCII letters, digits, '-', '_' or '.'")

	// ErrTooLarge is returned by Send for a message larger than the
	// engine carries (see Engine.MaxPayload).
	ErrTooLarge = errors.New("groups: message too large for the engine")

	// ErrClosed is returned by a closed Layer or Member.
	ErrClosed = errors.New("groups: closed")
)

// Options configures a [Layer]. A nil *Options means defaults.
type Options struct {
	// Logger receives the failures nobody waits for (a send deferred to a
	// commit), and the panics of members' callbacks. A panic of its
	// handler loses the record and ends nothing. Default: slog.Default().
	Logger *slog.Logger
}

// Layer carries messages to named groups of members through an [Engine].
// It is safe for concurrent use.
type Layer struct {
	engine Engine
	log    *slog.Logger
	origin [4]byte // this layer's part of every message id
	seq    atomic.Uint64

	// Messages dropped as not made by this package (any role may NOTIFY a
	// group's channel), and when the last warning of them was logged.
	foreign       atomic.Int64
	foreignLogged atomic.Int64 // unix nanoseconds

	subMu     sync.Mutex // orders the engine's Subscribe and Unsubscribe calls
	mu        sync.RWMutex
	groups    map[string]map[*Member]struct{}
	closed    atomic.Bool
	closeDone chan struct{} // closed once Close has closed the engine
	closeErr  error         // the engine's Close's, once closeDone is

	// The members whose goroutine runs, for the sweep (see Member.run).
	lmu      sync.Mutex
	running  []*Member
	sweeping bool          // the sweep's goroutine runs
	ticks    atomic.Uint64 // the sweep's ticks

	c struct {
		members, sent, delivered, slow, gaps, reconnects atomic.Int64
	}
	countSent func() // adds to c.sent; made once, for dbctx.OnCommit

	// The gaps owed: groups whose gap, in place of a message that could
	// not go out, could not go out either (see tellGap).
	owedMu sync.Mutex
	owed   map[string]struct{}
	owing  atomic.Bool
}

// New returns a Layer over engine, which it starts: the PostgreSQL engine
// connects its listener, and fails where it cannot.
func New(engine Engine, opts *Options) (*Layer, error) {
	var o Options
	if opts != nil {
		o = *opts
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	l := &Layer{engine: engine, log: logattrs.Safe(o.Logger), groups: map[string]map[*Member]struct{}{}, closeDone: make(chan struct{})}
	l.countSent = func() { l.c.sent.Add(1) }
	rand.Read(l.origin[:])
	if err := engine.Start(inbox{l}); err != nil {
		return nil, err
	}
	return l, nil
}

// Close stops the engine. Members are their owners' to close; sends fail
// with ErrClosed afterwards. The gaps owed (see Send) go out first, where
// the engine carries them within 5 s; those that cannot are logged. It
// may be called more than once, and concurrently: each call returns once
// the engine is closed, with its error.
func (l *Layer) Close() error {
	if l.closed.Swap(true) {
		<-l.closeDone
		return l.closeErr
	}
	defer close(l.closeDone)
	if l.owing.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), closeGapsTimeout)
		l.payGaps(ctx)
		cancel()
		l.owedMu.Lock()
		n := len(l.owed)
		l.owedMu.Unlock()
		if n > 0 {
			l.log.Warn("groups: closed with gaps the engine could not carry: the members of other instances are not told of messages lost", "groups", n)
		}
	}
	l.closeErr = l.engine.Close()
	return l.closeErr
}

// closeGapsTimeout bounds Close's publish of the gaps owed.
const closeGapsTimeout = 5 * time.Second

// Ready reports the engine's state: nil when it delivers (for a readiness
// probe).
func (l *Layer) Ready() error {
	if l.closed.Load() {
		return ErrClosed
	}
	return l.engine.Ready()
}

// Event is what a member gets: a message sent to one of its groups, or a
// gap.
type Event struct {
	// Group is the group the message was sent to, or whose messages a
	// gap may have lost.
	Group string
	// Data is the message as sent; nil for a gap. It is shared by every
	// member of the group: do not modify it.
	Data []byte
	// Gap says that messages to Group may have been lost (the engine's
	// connection broke): reload what they would have told.
	Gap bool
}

// CheckGroup returns ErrGroupName unless name is a valid group name.
func CheckGroup(name string) error {
	if len(name) == 0 || len(name) > 100 {
		return ErrGroupName
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_', c == '.':
		default:
			return ErrGroupName
		}
	}
	return nil
}

// Send sends data to every member of group, on every instance. It
// returns once the engine has taken the message; members get it
// asynchronously. Inside dbctx.Atomic the message goes out only if the
// transaction commits (a failure then is logged, not returned, and every
// member of the group, on every instance, gets a gap in its place, once
// the engine carries it): with
// PostgreSQL, NOTIFY is sent on the scope's connection, within the
// transaction, where that scope is of the engine's pool; inside an
// Atomic of another pool (around the scope, or the scope's own), at that
// Atomic's commit: a message goes out once every Atomic it was sent in
// has committed (see dbctx.OnCommit); where that commit's outcome is
// unknown (dbctx.ErrCommitUnknown), every member of the group, on every
// instance, gets a gap in its place. ctx may carry a scope (an HTTP
// request's, a consumer's): PostgreSQL sends through it; otherwise
// through the engine's own pool.
func (l *Layer) Send(ctx context.Context, group string, data []byte) error {
	if l.closed.Load() {
		return ErrClosed
	}
	if err := CheckGroup(group); err != nil {
		return err
	}
	payload := l.envelope(group, data)
	if len(payload) > l.engine.MaxPayload() {
		return fmt.Errorf("%w: %d bytes, the engine carries %d with the envelope", ErrTooLarge, len(payload), l.engine.MaxPayload())
	}
	if l.engine.Transactional() {
		if j, ok := l.engine.(txJoiner); !ok || j.joinsTx(ctx) {
			if err := l.engine.Publish(ctx, group, payload); err != nil {
				return err
			}
			// It goes out at the commit of ctx's transaction, if any:
			// counted then, as a deferred send is.
			dbctx.OnCommit(ctx, l.countSent)
			if l.owing.Load() {
				// The engine carries again: the gaps owed go out once
				// this send has (never in its transaction, which may
				// roll back).
				dbctx.OnCommit(ctx, func() { l.payGaps(context.WithoutCancel(ctx)) })
			}
			return nil
		}
	}
	var err error
	now := true
	deferred := false
	scopes.OnCommitOrUnknown(ctx, func() {
		if !now {
			deferred = true
		}
		err = l.publish(context.WithoutCancel(ctx), group, payload)
		if deferred && err != nil {
			// Nobody is told of the error: the message of committed
			// work is lost, and every member of group, on every
			// instance, gets a gap in its place, where the engine
			// carries it (a gap is small: where a large message's
			// INSERT was refused, it goes as a NOTIFY).
			l.log.Warn("groups: a send at commit failed; its group gets a gap", "group", group, "err", err)
			l.tellGap(context.WithoutCancel(ctx), group)
		}
	}, func() {
		// The commit's outcome is unknown (dbctx.ErrCommitUnknown): the
		// message may be of committed work, and may not go out. Every
		// member of group, on every instance, gets a gap instead, where
		// the message would have come: dbctx runs this once the COMMIT
		// has settled on the server (its work visible, if done), before
		// Atomic returns, and it goes out as the message would have.
		l.tellGap(context.WithoutCancel(ctx), group)
	})
	now = false
	return err
}

// txJoiner is a Transactional engine that joins ctx's transaction only
// where ctx's scope is of its own pool (Postgres): elsewhere, Send goes
// out at that transaction's commit, as with an engine that is not
// Transactional.
type txJoiner interface {
	joinsTx(ctx context.Context) bool
}

func (l *Layer) publish(ctx context.Context, group string, payload []byte) error {
	if err := l.engine.Publish(ctx, group, payload); err != nil {
		return err
	}
	l.countSent()
	if l.owing.Load() {
		l.payGaps(ctx) // the engine carries again
	}
	return nil
}

// tellGap publishes a gap to group, on every instance, in place of a
// message of committed work that could not be sent (its publish failed,
// or its commit's outcome is unknown). Where the engine cannot carry it
// either (NATS down, its reconnect buffer full), the gap is owed: it goes
// out once the engine has reconnected, or at the next send that goes out,
// so that members on other instances, whose own connections may have
// been back before, are told too.
func (l *Layer) tellGap(ctx context.Context, group string) {
	if err := l.engine.Publish(ctx, group, l.gapEnvelope(group)); err != nil && l.owe(group) {
		l.log.Warn("groups: telling members of a send that could not go out failed; the gap goes out once the engine carries again", "group", group, "err", err)
	}
}

// owe keeps group's gap for payGaps, and reports whether it was not owed
// yet.
func (l *Layer) owe(group string) bool {
	l.owedMu.Lock()
	defer l.owedMu.Unlock()
	if l.owed == nil {
		l.owed = map[string]struct{}{}
	}
	_, was := l.owed[group]
	l.owed[group] = struct{}{}
	l.owing.Store(true)
	return !was
}

// payGaps publishes the gaps owed (see tellGap), with ctx (through the
// scope it carries, if any: it may hold its pool's only slot); those that
// fail again stay owed.
func (l *Layer) payGaps(ctx context.Context) {
	l.owedMu.Lock()
	owed := l.owed
	l.owed = nil
	l.owing.Store(false)
	l.owedMu.Unlock()
	for g := range owed {
		if err := l.engine.Publish(ctx, g, l.gapEnvelope(g)); err != nil {
			l.owe(g)
		}
	}
}

// The envelope of a message: "1|<id>|<group>|<kind><body>", kind 't' for
// a body sent as it is (UTF-8 text without NUL, as NOTIFY takes), 'b' for
// one in base64. The id, unique per message, keeps PostgreSQL from
// folding identical notifications of one transaction into one.
func (l *Layer) envelope(group string, data []byte) []byte {
	text := utf8.Valid(data)
	ascii := false // text must be ASCII: see asciiText
	if a, ok := l.engine.(asciiText); ok {
		ascii = a.asciiText()
	}
	for _, c := range data {
		if c == 0 || ascii && c >= 0x80 {
			text = false
			break
		}
	}
	n := 1 + base64.StdEncoding.EncodedLen(len(data))
	if text {
		n = 1 + len(data)
	}
	b := l.envelopeHead(group, n)
	if text {
		b = append(b, 't')
		b = append(b, data...)
	} else {
		b = append(b, 'b')
		b = base64.StdEncoding.AppendEncode(b, data)
	}
	return b
}

// envelopeHead returns an envelope's "1|<id>|<group>|", a new id, with
// room for rest bytes more.
func (l *Layer) envelopeHead(group string, rest int) []byte {
	var id [12]byte
	copy(id[:4], l.origin[:])
	binary.BigEndian.PutUint64(id[4:], l.seq.Add(1))
	b := make([]byte, 0, 2+hex.EncodedLen(len(id))+1+len(group)+1+rest)
	b = append(b, "1|"...)
	b = hex.AppendEncode(b, id[:])
	b = append(b, '|')
	b = append(b, group...)
	return append(b, '|')
}

// gapEnvelope is the envelope that tells members a message to group may
// be missing: kind 'g', no body.
func (l *Layer) gapEnvelope(group string) []byte { return append(l.envelopeHead(group, 1), 'g') }

// errGap is what open returns for a gap envelope.
var errGap = errors.New("groups: a gap")

// asciiText is an engine whose messages go as text only where ASCII:
// PostgreSQL in a database whose encoding is not UTF-8, which may hold no
// character for a UTF-8 one (LATIN1 has none for 中), and would refuse the
// NOTIFY or the table's row. A body of other text goes in base64 there.
type asciiText interface{ asciiText() bool }

// open reads an envelope back; errGap for a gap's (see gapEnvelope).
func open(payload []byte) (group string, data []byte, err error) {
	bad := errors.New("groups: malformed message")
	if len(payload) < 2 || string(payload[:2]) != "1|" {
		return "", nil, bad
	}
	rest := payload[2:]
	i := indexByte(rest, '|')
	if i < 0 {
		return "", nil, bad
	}
	rest = rest[i+1:]
	j := indexByte(rest, '|')
	if j < 0 || j+1 >= len(rest) {
		return "", nil, bad
	}
	group, body := string(rest[:j]), rest[j+1:]
	switch body[0] {
	case 't':
		return group, body[1:], nil
	case 'b':
		data, err := base64.StdEncoding.AppendDecode(nil, body[1:])
		return group, data, err
	case 'g':
		return group, nil, errGap
	}
	return "", nil, bad
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// dropForeign counts a message not made by this package, and warns of
// it at most once a minute, with how many were dropped in all: whoever
// may NOTIFY a group's channel must not flood the log.
func (l *Layer) dropForeign(err error) {
	n := l.foreign.Add(1)
	now, last := time.Now().UnixNano(), l.foreignLogged.Load()
	if now-last >= int64(time.Minute) && l.foreignLogged.CompareAndSwap(last, now) {
		l.log.Warn("groups: dropped a message not made by this package", "err", err, "dropped", n)
	}
}

// inbox is where the engine hands what arrives.
type inbox struct{ l *Layer }

func (in inbox) Deliver(payload []byte) {
	l := in.l
	group, data, err := open(payload)
	if err == errGap {
		in.Gap([]string{group})
		return
	}
	if err != nil {
		l.dropForeign(err)
		return
	}
	// Queued under the read lock rather than from a copy of the group's
	// members: enqueue never blocks, and the copy cost an allocation per
	// message.
	l.mu.RLock()
	defer l.mu.RUnlock()
	for m := range l.groups[group] {
		m.enqueue(Event{Group: group, Data: data}, true)
	}
}

func (in inbox) Gap(groups []string) {
	l := in.l
	if groups == nil {
		l.mu.RLock()
		for g := range l.groups {
			groups = append(groups, g)
		}
		l.mu.RUnlock()
	}
	for _, g := range groups {
		for _, m := range l.membersOf(g) {
			if m.enqueue(Event{Group: g, Gap: true}, false) {
				l.c.gaps.Add(1)
			}
		}
	}
}

func (in inbox) Reconnected() {
	l := in.l
	l.c.reconnects.Add(1)
	if l.owing.Load() {
		// Not on the engine's goroutine, which hands what arrives.
		go l.payGaps(context.Background())
	}
}

// membersOf returns the members of group now.
func (l *Layer) membersOf(group string) []*Member {
	l.mu.RLock()
	defer l.mu.RUnlock()
	ms := l.groups[group]
	if len(ms) == 0 {
		return nil
	}
	out := make([]*Member, 0, len(ms))
	for m := range ms {
		out = append(out, m)
	}
	return out
}

// Stats is a snapshot of a layer's counters, whatever its engine (an
// engine's own figures are its Stats: [Postgres.Stats], natslayer's).
// Gauges are current values; the rest count since the layer was made.
type Stats struct {
	Groups  int // groups with members in this process
	Members int // members, each counted once whatever its groups

	Sent       int64 // messages sent: inside a transaction, at its commit (none rolled back)
	Delivered  int64 // events members handled
	Slow       int64 // members that fell behind their queue, told and dropped
	Gaps       int64 // gap events queued to members
	Reconnects int64 // reconnections of the engine
}

// Stats returns a snapshot of the layer's counters.
func (l *Layer) Stats() Stats {
	l.mu.RLock()
	groups := len(l.groups)
	l.mu.RUnlock()
	st := Stats{
		Groups:     groups,
		Members:    int(l.c.members.Load()),
		Sent:       l.c.sent.Load(),
		Delivered:  l.c.delivered.Load(),
		Slow:       l.c.slow.Load(),
		Gaps:       l.c.gaps.Load(),
		Reconnects: l.c.reconnects.Load(),
	}
	return st
}
