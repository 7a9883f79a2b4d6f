package relay

import (
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"

	"github.com/reachp2p/reach/identity"
)

// FuzzStreamMux plays a relay's stream frames to a node's mux: OPEN, DATA,
// WINDOW and CLOSE in any order about a few streams, well-formed or not.
// Properties: no panic; a well-formed frame is taken (frame reports
// true); the mux never holds more than
// maxClientStreams streams; no accepted stream holds more bytes than it
// granted; after the link fails every stream's Read ends with an error.
func FuzzStreamMux(f *testing.F) {
	f.Add([]byte{0, 1, 0, 1, 1, 5, 'h', 'e', 'l', 'l', 'o', 3, 1, 1, 0})
	f.Add([]byte{0, 1, 0, 2, 1, 8, 0, 0, 0, 0, 0, 0, 1, 0, 3, 1, 1, 1})
	f.Add([]byte{0, 1, 0, 0, 1, 0, 1, 1, 200})
	f.Fuzz(func(t *testing.T, in []byte) {
		l := &link{done: make(chan struct{}), closeTransport: func() {}}
		co := newCoalescer(func([]byte) error { return nil })
		go co.run(l)
		var mu sync.Mutex
		var accepted []net.Conn
		m := newStreamMux(fuzzPeer(9), co, func(_ identity.PeerID, c net.Conn) {
			mu.Lock()
			accepted = append(accepted, c)
			mu.Unlock()
		}, slog.New(slog.DiscardHandler))
		l.streams = m
		for len(in) >= 3 {
			typ := frameOpen + in[0]%4
			ref := streamRef{peer: fuzzPeer(1 + in[1]%2), id: uint32(in[1]>>1) | acceptorBit}
			if in[1]&0x80 != 0 {
				ref.id &^= acceptorBit // a stream the node did not open
			}
			n := min(int(in[2]), len(in)-3)
			rest := in[3 : 3+n]
			in = in[3+n:]
			var body []byte
			well := false
			switch typ {
			case frameOpen:
				well = n == 0 && ref.id&acceptorBit != 0
			case frameData:
				well = true
			case frameWindow:
				well = n == 8
			case frameClose:
				well = n == 1
			}
			body = appendStreamFrame(nil, typ, ref, rest)[frameHeader:]
			ok := m.frame(typ, body)
			if well && !ok {
				t.Fatalf("well-formed frame 0x%02x %x refused", typ, rest)
			}
			m.mu.Lock()
			if len(m.conns) > maxClientStreams {
				t.Fatalf("%d streams held", len(m.conns))
			}
			for _, c := range m.conns {
				c.mu.Lock()
				if held := c.rq.Len(); c.received > c.granted || held > StreamWindow {
					t.Fatalf("a stream holds %d bytes, received %d of %d granted", held, c.received, c.granted)
				}
				c.mu.Unlock()
			}
			m.mu.Unlock()
		}
		l.fail(ErrClosed)
		// Every stream handed over so far ends: its Read returns what
		// was buffered, then an error (or io.EOF after a fin).
		mu.Lock()
		conns := append([]net.Conn(nil), accepted...)
		mu.Unlock()
		for _, c := range conns {
			io.Copy(io.Discard, c)
			c.Close()
		}
	})
}
