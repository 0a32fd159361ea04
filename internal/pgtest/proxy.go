package pgtest

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dbscope/dbscope/internal/pgserver"
)

// Proxy is a TCP proxy in front of the base server for fault injection:
// it can cut connections ([Proxy.Cut]) or hold their bytes back
// ([Proxy.Stall]) until [Proxy.Restore].
type Proxy struct {
	env     *Env
	ln      net.Listener
	network string // how to reach the server: "tcp" or "unix"
	target  string
	ctx     context.Context // ended by Close; aborts dials
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu      sync.Mutex
	closed  bool
	cut     bool
	flowing chan struct{} // closed while bytes flow; open while stalled
	links   map[*link]struct{}

	ready   atomic.Int64 // ReadyForQuery messages the server sent
	trips   atomic.Int64 // the clients' turns to send (see Trips)
	muted   atomic.Bool  // the server's bytes are dropped (see Mute)
	refused atomic.Int64 // connections closed at once while cut (see Refused)
	dials   atomic.Int64 // connections accepted (see Accepted)
}

// Mute drops every byte the server sends from now on, on every
// connection, while the clients' bytes still reach it: a statement runs,
// and its answer is lost (then [Proxy.Cut], say). [Proxy.Restore] undoes
// it for the bytes that follow.
func (p *Proxy) Mute() { p.muted.Store(true) }

// link is one client connection and its connection to the server.
type link struct {
	client net.Conn
	server net.Conn // nil until dialed
	done   chan struct{}
	once   sync.Once
	heard  atomic.Bool // the server sent bytes since the client last did
	tap    atomic.Pointer[Tap]
}

// shut closes both sides of l, once.
func (l *link) shut() {
	l.once.Do(func() {
		close(l.done)
		l.client.Close()
		if l.server != nil {
			l.server.Close()
		}
	})
}

// NewProxy starts a proxy on 127.0.0.1:0 that forwards to the base server
// of e (over TCP or its unix socket). It is closed when tb's test ends,
// with all its goroutines finished.
func NewProxy(tb testing.TB, e *Env) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("pgtest: proxy listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		env:     e,
		ln:      ln,
		network: e.srv.network,
		target:  e.srv.addr,
		ctx:     ctx,
		cancel:  cancel,
		flowing: make(chan struct{}),
		links:   make(map[*link]struct{}),
	}
	close(p.flowing)
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.Close)
	return p
}

// Addr returns the proxy's address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// DSN returns the Env's DSN routed through the proxy, with sslmode=disable
// so that TLS negotiation does not get in the way.
func (p *Proxy) DSN() string {
	dsn, err := pgserver.WithParams(p.env.DSNVia(p.Addr()), "sslmode", "disable")
	if err != nil {
		panic(err) // the Env's DSN was parsed before
	}
	return dsn
}

// Cut closes every connection through the proxy, and closes new ones as soon
// as they are accepted, until [Proxy.Restore].
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for l := range p.links {
		l.shut()
		delete(p.links, l)
	}
}

// Stall stops forwarding bytes in both directions, on live connections and
// on new ones, without closing anything, until [Proxy.Restore].
func (p *Proxy) Stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.flowing:
		p.flowing = make(chan struct{})
	default: // already stalled
	}
}

// Restore undoes [Proxy.Cut] and [Proxy.Stall]: new connections are let
// through and held bytes flow again. Connections that Cut closed stay closed.
func (p *Proxy) Restore() {
	p.muted.Store(false)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	select {
	case <-p.flowing:
	default:
		close(p.flowing)
	}
}

// Refused returns how many connections the proxy closed as soon as it
// accepted them, being cut: tests wait on it for a client that tries to
// connect while the network is down.
func (p *Proxy) Refused() int64 { return p.refused.Load() }

// Accepted returns how many connections clients opened to the proxy,
// those refused while cut included: tests wait on it for a client's
// attempts to connect.
func (p *Proxy) Accepted() int64 { return p.dials.Load() }

// Ready returns how many ReadyForQuery messages the server has sent through
// the proxy: one per round trip that ended with a Sync (or a simple
// Query), the server's answer to each, counted as the protocol counts
// them. Tests compare it before and after a unit of work to count its
// round trips.
func (p *Proxy) Ready() int64 { return p.ready.Load() }

// Trips returns how many round trips clients began through the proxy:
// the times a client sent bytes after the server had sent some since it
// last did (or for the first time). What a client writes at once, however
// many messages and Syncs, before it reads the answer, is one. A client
// writes a round trip's messages in one write, which the proxy reads at
// once on loopback.
func (p *Proxy) Trips() int64 { return p.trips.Load() }

// Conns returns the number of live connections through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.links)
}

// Close stops the proxy, closes all its connections and waits for its
// goroutines to end. NewProxy arranges for it to be called at cleanup; it
// may be called more than once.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for l := range p.links {
		l.shut()
		delete(p.links, l)
	}
	p.mu.Unlock()
	p.cancel()
	p.ln.Close()
	p.wg.Wait()
}

// accept accepts client connections until the listener is closed.
func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // a transient error such as EMFILE; Close ends the loop
		}
		p.dials.Add(1)
		l := &link{client: c, done: make(chan struct{})}
		l.heard.Store(true)
		p.mu.Lock()
		if p.cut || p.closed {
			p.mu.Unlock()
			c.Close()
			p.refused.Add(1)
			continue
		}
		p.links[l] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go p.serve(l)
	}
}

// serve dials the server for l and forwards bytes both ways until either
// side closes or the proxy cuts l.
func (p *Proxy) serve(l *link) {
	defer p.wg.Done()
	defer p.drop(l)
	d := net.Dialer{Timeout: 10 * time.Second}
	s, err := d.DialContext(p.ctx, p.network, p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	select {
	case <-l.done: // cut while dialing
		p.mu.Unlock()
		s.Close()
		return
	default:
		l.server = s
	}
	p.mu.Unlock()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.pipe(l, s, l.client, false, nil, func() {
			if l.heard.Swap(false) {
				p.trips.Add(1)
			}
		})
	}()
	p.pipe(l, l.client, s, true, &messages{count: 'Z', n: &p.ready, muted: &p.muted}, func() { l.heard.Store(true) })
	wg.Wait()
}

// messages follows the server's side of the protocol, every message of
// which is a type byte and a length, and counts those of one type. The
// proxy's connections never negotiate TLS (see DSN).
type messages struct {
	count byte
	n     *atomic.Int64
	muted *atomic.Bool // the bytes are dropped, not forwarded
	head  [5]byte
	have  int // bytes of head read
	left  int // bytes of the current message's body still to skip
}

func (m *messages) feed(b []byte) {
	for len(b) > 0 {
		if m.left > 0 {
			k := min(m.left, len(b))
			m.left -= k
			b = b[k:]
			continue
		}
		k := copy(m.head[m.have:], b)
		m.have += k
		b = b[k:]
		if m.have < len(m.head) {
			return
		}
		if m.head[0] == m.count {
			m.n.Add(1)
		}
		m.left = int(binary.BigEndian.Uint32(m.head[1:])) - 4
		m.have = 0
	}
}

// drop forgets l and closes it.
func (p *Proxy) drop(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
	l.shut()
}

// pipe copies src to dst, holding bytes back while the proxy is stalled,
// and shuts l when either side fails. m, if not nil, follows the messages;
// read is called for every read, before its bytes go on. fromServer says
// which way the bytes go, for l's Tap.
func (p *Proxy) pipe(l *link, dst, src net.Conn, fromServer bool, m *messages, read func()) {
	defer p.drop(l)
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitFlowing(l) {
				return
			}
			read()
			if m != nil && m.muted.Load() {
				continue
			}
			for data := buf[:n]; len(data) > 0; {
				k, act := len(data), func() {}
				if t := l.tap.Load(); t != nil {
					k, act = t.feed(fromServer, data)
				}
				if m != nil {
					m.feed(data[:k])
				}
				if k > 0 {
					if _, err := dst.Write(data[:k]); err != nil {
						return
					}
				}
				data = data[k:]
				act()
			}
		}
		if err != nil {
			return
		}
	}
}

// waitFlowing waits until the proxy is not stalled; it reports false if l
// was closed meanwhile.
func (p *Proxy) waitFlowing(l *link) bool {
	for {
		p.mu.Lock()
		gate := p.flowing
		p.mu.Unlock()
		select {
		case <-gate:
			// Stall may have been called again since gate was read; check.
			p.mu.Lock()
			same := gate == p.flowing
			p.mu.Unlock()
			if same {
				return true
			}
		case <-l.done:
			return false
		}
	}
}
