package pathsock

import (
	"encoding/binary"
	"net/netip"
	"sync"
)

// TokenLen is the length of the token InterceptToken routes by: the bytes
// right after a datagram's first byte, big endian.
const TokenLen = 8

// tokenDemux routes the datagrams of one interceptKey by token.
type tokenDemux struct {
	mu       sync.RWMutex
	handlers map[uint64]*tokenEntry
	remove   func() // the Intercept of the key
}

// tokenEntry is one registration: remove takes away only its own.
type tokenEntry struct{ h InterceptFunc }

// tokens holds a Conn's token demuxes.
type tokens struct {
	mu    sync.Mutex
	byKey map[interceptKey]*tokenDemux
}

// InterceptToken is Intercept for datagrams that carry a token in the
// TokenLen bytes after their first byte: h takes those whose first byte
// is first, from from (the zero AddrPort: any source), and whose token is
// token. Several handlers may share a first byte and source, each with a
// token of its own (a relay client's link and a rendezvous client's
// parked registration on a node's socket; a process that runs many
// clients of one server on one socket has one each). A datagram too
// short to carry a token, or with a token nobody registered, is dropped.
// Registering a token again replaces its handler; remove takes h away
// (and not a handler registered for the token since).
func (c *Conn) InterceptToken(first byte, from netip.AddrPort, token uint64, h InterceptFunc) (remove func()) {
	k := interceptKey{first, unmapped(from)}
	e := &tokenEntry{h}
	ts := &c.tokens
	ts.mu.Lock()
	d := ts.byKey[k]
	if d == nil {
		if ts.byKey == nil {
			ts.byKey = map[interceptKey]*tokenDemux{}
		}
		d = &tokenDemux{handlers: map[uint64]*tokenEntry{}}
		d.remove = c.Intercept(first, from, d.take)
		ts.byKey[k] = d
	}
	d.mu.Lock()
	d.handlers[token] = e
	d.mu.Unlock()
	ts.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			ts.mu.Lock()
			defer ts.mu.Unlock()
			d.mu.Lock()
			if d.handlers[token] == e {
				delete(d.handlers, token)
			}
			empty := len(d.handlers) == 0
			d.mu.Unlock()
			if empty && ts.byKey[k] == d {
				delete(ts.byKey, k)
				d.remove()
			}
		})
	}
}

// take hands a datagram to the handler of its token, on the socket's
// read loop.
func (d *tokenDemux) take(b []byte, from netip.AddrPort) (int, netip.AddrPort) {
	if len(b) < 1+TokenLen {
		return 0, netip.AddrPort{}
	}
	d.mu.RLock()
	e := d.handlers[binary.BigEndian.Uint64(b[1:1+TokenLen])]
	d.mu.RUnlock()
	if e == nil {
		return 0, netip.AddrPort{}
	}
	return e.h(b, from)
}
