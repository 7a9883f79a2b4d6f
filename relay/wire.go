package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/reachp2p/reach/identity"
)

// ALPN is the TLS application protocol of relay links, on QUIC and on TLS
// over TCP.
const ALPN = "reach-relay/1"

// PacketSize is the size of the QUIC packets of relayed sessions (the QUIC
// minimum). With the 32-byte peer key in front it fits in one QUIC DATAGRAM
// frame of an outer connection whose packets are 1280 bytes, the IPv6
// minimum MTU, so relayed sessions work on every path without fragments.
const PacketSize = 1200

// MaxPayload is the largest packet a link carries for a peer. The relay
// drops larger ones (protocol.md, Relay).
const MaxPayload = 1452

// Frame types on a link's byte stream (the whole TLS connection, or the
// control stream of a QUIC link).
const (
	frameHello   = 0x01 // client → server: token
	frameWelcome = 0x02 // server → client: max payload, keepalive
	framePacket  = 0x03 // either, byte-stream links only: peer key + packet
	frameNotice  = 0x04 // server → client: peer key + notice code
	frameError   = 0x05 // server → client: error code + reason; then close
	framePing    = 0x06 // either: 8 bytes
	framePong    = 0x07 // either: echoes the ping
	frameAllow   = 0x08 // client → server: empty (consent wanted), or a peer key the client receives from
	frameDetach  = 0x09 // either, QUIC links: empty; the link goes on as data packets alone (detached)
	// In data packets of detached links only (never on a byte stream):
	frameChallenge = 0x0a // server → client, to a new address: nonce (8)
	frameResponse  = 0x0b // client → server, from it: nonce (8) + MAC (16)
)

// welcomeConsent is the WELCOME flag (the fifth byte of its body) of a
// relay that understands ALLOW frames (recipient consent). Older clients
// ignore the byte; clients send no ALLOW to a relay without it.
const welcomeConsent = 0x01

const frameHeader = 3 // type, 2-byte length

// maxFrameBody is the largest frame body accepted (a packet frame: the
// peer key and MaxPayload).
const maxFrameBody = identityLen + MaxPayload

const identityLen = len(identity.PeerID{})

// Error codes of ERROR frames (and of the QUIC application close code on
// QUIC links).
const (
	codeProtocol     = 0x01
	codeBadToken     = 0x02
	codeTokenExpired = 0x03
	codeFull         = 0x04
	codeRateLimited  = 0x05
	codeReplaced     = 0x06
	codeShutdown     = 0x07
	codeKeyProof     = 0x08 // ALPNKeyProof: no valid proof of the node's key in HELLO
)

// Notice codes of NOTICE frames: why a packet to a peer was not forwarded.
const (
	noticeNoPeer       = 0x01 // the peer is not connected to this relay
	noticeSessionLimit = 0x02 // the relay is at a session limit
	noticeNotAllowed   = 0x03 // the peer has not consented to packets from the sender
)

// Named errors. Test with errors.Is; errors the relay server sends arrive
// as a *ServerError that unwraps to one of them.
var (
	// ErrRelayFull: the relay is at its limit of connected peers or of
	// relay sessions (in all, of the sender, or of the sender's source).
	ErrRelayFull = errors.New("relay: relay is full")
	// ErrBadToken: the relay requires a token and the one given (or none)
	// is not valid for this peer.
	ErrBadToken = errors.New("relay: bad relay token")
	// ErrTokenExpired: the token was valid but its expiry has passed.
	ErrTokenExpired = errors.New("relay: relay token expired")
	// ErrRateLimited: too many connections, or links at once, from this
	// IP address (IPv6: its /64).
	ErrRateLimited = errors.New("relay: too many connections from this address")
	// ErrReplaced: a newer link of the same peer ID took over.
	ErrReplaced = errors.New("relay: replaced by a newer link of the same peer")
	// ErrShutdown: the relay server is stopping.
	ErrShutdown = errors.New("relay: server shutting down")
	// ErrProtocol: the other side broke the relay protocol.
	ErrProtocol = errors.New("relay: protocol error")
	// ErrPeerNotConnected: the relay reported the peer is not connected
	// to it, and the peer did not connect in time.
	ErrPeerNotConnected = errors.New("relay: peer not connected to the relay")
	// ErrNotAllowed: the relay dropped packets to a peer that has not
	// consented to receive from this node (it was not introduced to it,
	// or its consent expired; see ClientConfig.Consent).
	ErrNotAllowed = errors.New("relay: peer has not allowed packets from this node")
	// ErrNoRelay: the server does not run a relay (it refused the relay
	// ALPN), or no transport to it worked.
	ErrNoRelay = errors.New("relay: no relay link")
	// ErrLinkLost: a detached link's relay stopped answering its pings
	// (the relay went away, or the node's address changed); the client
	// links again.
	ErrLinkLost = errors.New("relay: link lost: the relay stopped answering")
	// ErrClosed: the client or link is closed.
	ErrClosed = errors.New("relay: closed")
)

// ServerError is an ERROR the relay server sent before closing a link.
type ServerError struct {
	Code   byte
	Reason string
}

func (e *ServerError) Error() string {
	return fmt.Sprintf("relay: server error %s: %s", codeName(e.Code), e.Reason)
}

// Unwrap returns the named error for the code.
func (e *ServerError) Unwrap() error {
	switch e.Code {
	case codeBadToken:
		return ErrBadToken
	case codeTokenExpired:
		return ErrTokenExpired
	case codeFull:
		return ErrRelayFull
	case codeRateLimited:
		return ErrRateLimited
	case codeReplaced:
		return ErrReplaced
	case codeShutdown:
		return ErrShutdown
	case codeKeyProof:
		return ErrKeyProof
	}
	return ErrProtocol
}

func codeName(c byte) string {
	switch c {
	case codeProtocol:
		return "protocol"
	case codeBadToken:
		return "bad_token"
	case codeTokenExpired:
		return "token_expired"
	case codeFull:
		return "full"
	case codeRateLimited:
		return "rate_limited"
	case codeReplaced:
		return "replaced"
	case codeShutdown:
		return "shutdown"
	case codeKeyProof:
		return "key_proof"
	}
	return fmt.Sprintf("0x%02x", c)
}

// readFrame reads one frame into buf (grown as needed) and returns its
// type and body (aliasing buf).
func readFrame(r io.Reader, buf []byte) (typ byte, body []byte, _ []byte, err error) {
	if cap(buf) < frameHeader {
		buf = make([]byte, 0, frameHeader+maxFrameBody)
	}
	h := buf[:frameHeader]
	if _, err := io.ReadFull(r, h); err != nil {
		return 0, nil, buf, err
	}
	typ, n, err := frameHead(h)
	if err != nil {
		return 0, nil, buf, err
	}
	if cap(buf) < n {
		buf = make([]byte, 0, n)
	}
	body = buf[:n]
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, buf, err
	}
	return typ, body, buf, nil
}

// frameHead reads a frame header (at least frameHeader bytes): the
// frame's type and body length, or ErrProtocol for a type a link may not
// carry or a body too long for it.
func frameHead(h []byte) (typ byte, n int, err error) {
	typ = h[0]
	n = int(binary.BigEndian.Uint16(h[1:3]))
	if typ == 0 || typ > lastFrameType || typ == frameChallenge || typ == frameResponse {
		return 0, 0, fmt.Errorf("%w: unknown frame type 0x%02x", ErrProtocol, typ)
	}
	if n > maxBody(typ) {
		return 0, 0, fmt.Errorf("%w: frame body of %d bytes", ErrProtocol, n)
	}
	return typ, n, nil
}

// appendFrame appends a frame of type typ with the concatenated parts as
// its body.
func appendFrame(b []byte, typ byte, parts ...[]byte) []byte {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	b = append(b, typ, byte(n>>8), byte(n))
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// bufSize is the size of pooled packet buffers: a packet frame, the
// largest message that is sent or received per packet.
const bufSize = frameHeader + maxFrameBody

// bufPool recycles the per-packet buffers of links, the packet connection
// and the server's forwarding, so that relaying allocates nothing per
// packet.
var bufPool = sync.Pool{New: func() any { return new([bufSize]byte) }}

// getBuf returns an empty slice of a pooled buffer of bufSize bytes.
func getBuf() []byte { return bufPool.Get().(*[bufSize]byte)[:0] }

// putBuf returns b's buffer to the pool, if it came from getBuf. b must
// not be used afterwards.
func putBuf(b []byte) {
	if cap(b) == bufSize {
		bufPool.Put((*[bufSize]byte)(b[:bufSize]))
	}
}
