// Package tlstake takes a server's TLS 1.3 connection over from
// crypto/tls once its handshake is done: the peer still speaks TLS 1.3
// (RFC 8446) on the wire, but the records are sealed and opened here, on
// the raw connection, with the application traffic secrets crypto/tls
// derived (learnt through its KeyLogWriter hook).
//
// Why: a *tls.Conn keeps its read buffer at the size of the largest
// record it ever read (17 KB once data moved), its handshake buffer, and
// both directions' AEADs for the connection's life, and writes each
// record with a syscall of its own. A relay holding 10,000s of idle
// WebSocket tunnels (reach's TLS-in-WebSocket-in-TLS fallback) pays that
// per tunnel. A taken-over Conn holds its secrets, IVs and counters
// (about 300 bytes) while idle, its buffers only while bytes move, can
// drop its AEADs while parked (Idle), and seals a whole write in one
// syscall.
//
// Only what follows the handshake is handled: application data, alerts,
// and the one post-handshake message a client may send, KeyUpdate
// (answered as §4.6.3 says). Take refuses anything else it cannot follow
// exactly (TLS 1.2, an unknown cipher suite, secrets not seen, a read
// that went past the handshake), and the caller keeps the *tls.Conn.
//
// The takeover has two preconditions the caller sets up: crypto/tls read
// the connection through a Bounded (so that it never read a byte past
// the client's Finished), and the server's config has
// SessionTicketsDisabled (so that crypto/tls sent no record under the
// application secret: both counters start at 0).
package tlstake

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
)

// Named errors. Test with errors.Is.
var (
	// ErrCannotTake: Take cannot follow this connection exactly (the
	// error says why); the caller keeps the *tls.Conn.
	ErrCannotTake = errors.New("tlstake: cannot take the connection over")
	// ErrRecord: a record that does not open, is too long or is of a type
	// not allowed after the handshake; the connection is done (the peer
	// gets an alert where one applies).
	ErrRecord = errors.New("tlstake: bad TLS record")
	// ErrAlert: the peer sent a fatal alert (the error names it).
	ErrAlert = errors.New("tlstake: TLS alert from the peer")
)

// Bounded is the connection crypto/tls reads a handshake through when
// the server may take it over (and a relay node reads a link's TLS
// through until WELCOME, after which the relay's own records follow on
// the connection): until Unbound, a read never goes past the
// end of the TLS record it is in (Bounded parses the 5-byte record
// headers), so crypto/tls holds no byte of what follows the handshake.
// Its Config makes crypto/tls log the connection's application traffic
// secrets to it, for Take.
type Bounded struct {
	net.Conn
	hdr     [5]byte
	nh      int  // header bytes read
	left    int  // the record's body bytes still to read; 0: in a header
	unbound bool // reads go straight to Conn
	keys    keyLog
}

// NewBounded wraps c.
func NewBounded(c net.Conn) *Bounded { return &Bounded{Conn: c} }

// Read implements net.Conn.
func (b *Bounded) Read(p []byte) (int, error) {
	if b.unbound {
		return b.Conn.Read(p)
	}
	if b.left > 0 {
		if len(p) > b.left {
			p = p[:b.left]
		}
		n, err := b.Conn.Read(p)
		b.left -= n
		return n, err
	}
	if len(p) > len(b.hdr)-b.nh {
		p = p[:len(b.hdr)-b.nh]
	}
	n, err := b.Conn.Read(p)
	copy(b.hdr[b.nh:], p[:n])
	b.nh += n
	if b.nh == len(b.hdr) {
		b.left, b.nh = int(binary.BigEndian.Uint16(b.hdr[3:])), 0
	}
	return n, err
}

// AtBoundary: no record was read in part.
func (b *Bounded) AtBoundary() bool { return b.nh == 0 && b.left == 0 }

// Unbound makes reads go straight to the connection (crypto/tls keeps
// it: no takeover). Call it before the first read after the handshake.
func (b *Bounded) Unbound() {
	b.unbound = true
	clear(b.keys.cli)
	clear(b.keys.srv)
	b.keys = keyLog{}
}

// ParkConn returns the TCP connection under b (under the connection b
// wraps, if that one is carried in another: its ParkConn): with b
// unbound, nothing is held here that the connection does not show as
// readable.
func (b *Bounded) ParkConn() net.Conn { return parkConnOf(b.Conn) }

// Idle passes Idle on to the connection b wraps, if it has one.
func (b *Bounded) Idle() {
	if i, ok := b.Conn.(interface{ Idle() }); ok {
		i.Idle()
	}
}

// parkConnOf returns c's ParkConn if it has one, else c.
func parkConnOf(c net.Conn) net.Conn {
	if pc, ok := c.(interface{ ParkConn() net.Conn }); ok {
		return pc.ParkConn()
	}
	return c
}

// Config returns a clone of cfg that logs this connection's secrets to
// b (for tls.Config.GetConfigForClient, whose ClientHelloInfo.Conn is b),
// with session tickets off (a ticket would be a record under the
// application secret that Take cannot count).
func (b *Bounded) Config(cfg *tls.Config) *tls.Config {
	c := cfg.Clone()
	c.KeyLogWriter = &b.keys
	c.SessionTicketsDisabled = true
	return c
}

// keyLog takes crypto/tls's key log lines for one connection (as its
// KeyLogWriter): it keeps the two application traffic secrets and
// ignores the rest.
type keyLog struct{ cli, srv []byte }

func (k *keyLog) Write(p []byte) (int, error) {
	for _, l := range []struct {
		label string
		dst   *[]byte
	}{{"CLIENT_TRAFFIC_SECRET_0 ", &k.cli}, {"SERVER_TRAFFIC_SECRET_0 ", &k.srv}} {
		if !bytes.HasPrefix(p, []byte(l.label)) {
			continue
		}
		// "<label> <client random> <secret>\n", in hex.
		f := bytes.Fields(p[len(l.label):])
		if len(f) == 2 {
			if s, err := hex.DecodeString(string(f[1])); err == nil {
				*l.dst = s
			}
		}
	}
	return len(p), nil
}

// Take takes tc's connection over: tc's handshake is done, it read
// through b, and its config came from b.Config. tc must not be used
// again (not even closed: close the returned Conn). On error
// (ErrCannotTake) nothing changed: b is unbound and tc goes on.
func Take(tc *tls.Conn, b *Bounded) (*Conn, error) {
	cs := tc.ConnectionState()
	var why string
	switch {
	case !cs.HandshakeComplete:
		why = "handshake not done"
	case cs.Version != tls.VersionTLS13:
		why = fmt.Sprintf("TLS version %#x", cs.Version)
	case suiteOf(cs.CipherSuite) == nil:
		why = "cipher suite " + tls.CipherSuiteName(cs.CipherSuite)
	case b.keys.cli == nil || b.keys.srv == nil:
		why = "no traffic secrets logged"
	case !b.AtBoundary():
		why = "a record read in part"
	}
	if why != "" {
		b.Unbound()
		return nil, fmt.Errorf("%w: %s", ErrCannotTake, why)
	}
	s := suiteOf(cs.CipherSuite)
	c := &Conn{raw: b.Conn}
	if err := c.in.init(s, b.keys.cli); err != nil {
		b.Unbound()
		return nil, fmt.Errorf("%w: %v", ErrCannotTake, err)
	}
	if err := c.out.init(s, b.keys.srv); err != nil {
		b.Unbound()
		return nil, fmt.Errorf("%w: %v", ErrCannotTake, err)
	}
	b.Unbound() // the secrets are c's now
	return c, nil
}

// Read and write buffers come from two pools: a Conn holds one only while
// bytes move (a partial record, plaintext not yet read, a write in
// progress). A small one serves the small records of signalling and
// keepalives; a large one (several whole records: a read syscall takes
// what the connection has, up to this) serves bulk data. One size for
// both would have 10,000 registrations answering at once hold 10,000
// large buffers until the GC emptied the pool.
const (
	smallBuf = 4 << 10
	largeBuf = 4 * maxCiphertext
)

var (
	smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBuf); return &b }}
	largeBufs = sync.Pool{New: func() any { b := make([]byte, largeBuf); return &b }}
)

// getBuf returns a pooled buffer of at least n bytes if one is that
// large (else a large one).
func getBuf(n int) *[]byte {
	if n <= smallBuf {
		return smallBufs.Get().(*[]byte)
	}
	return largeBufs.Get().(*[]byte)
}

// putBuf recycles bp unless a write grew it past its pool's size.
func putBuf(bp *[]byte) {
	switch cap(*bp) {
	case smallBuf:
		*bp = (*bp)[:smallBuf]
		smallBufs.Put(bp)
	case largeBuf:
		*bp = (*bp)[:largeBuf]
		largeBufs.Put(bp)
	}
}

const (
	recordHeaderLen = 5
	maxPlaintext    = 1 << 14            // RFC 8446 §5.1
	maxCiphertext   = maxPlaintext + 256 // §5.2: TLSCiphertext.length limit
	typeAlert       = 21
	typeHandshake   = 22
	typeAppData     = 23
)
