package relay

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/reachp2p/reach/identity"
)

// Relayed streams (docs/protocol.md, "Relayed streams"): on byte-stream
// links (TLS, WebSocket, a proxy tunnel) two peers may open a reliable
// byte stream through the relay instead of sending QUIC packets, so a
// session between two TCP-linked peers runs TLS+yamux end to end with one
// congestion controller per leg (TCP's), not QUIC's nested inside two
// TCP connections. The relay forwards the frames between the two links and
// reads nothing of the stream's content: the session's own TLS protects
// it.
//
// A stream is named on each link by the other peer's key and a 32-bit
// stream number. The opener picks the number with the top bit clear; the
// relay sets the top bit when it names the stream to the acceptor, so a
// stream number never collides with one the other side opened, and the
// relay translates by flipping that bit.
const (
	frameFeatures = 0x0c // client → server, after WELCOME: flags (featureStreams)
	frameOpen     = 0x0d // peer + stream
	frameData     = 0x0e // peer + stream + bytes
	frameWindow   = 0x0f // peer + stream + limit (8 bytes)
	frameClose    = 0x10 // peer + stream + code
	// frameHelloStreams is HELLO for a streams-only link (streamlink.go):
	// a byte-stream link beside the node's UDP link that carries the
	// relayed streams it opens, and nothing else.
	frameHelloStreams = 0x11
	lastFrameType     = frameHelloStreams
)

// welcomeStreams is the WELCOME flag of a relay that forwards relayed
// streams on this link.
const welcomeStreams = 0x08

// featureStreams, in a FEATURES frame, says the client accepts relayed
// streams: the relay forwards OPENs to it.
const featureStreams = 0x01

// acceptorBit is set in the stream numbers the acceptor side sees.
const acceptorBit = 1 << 31

// streamHeader is the body prefix of stream frames: peer key, stream.
const streamHeader = identityLen + 4

// streamChunk is the most stream bytes one DATA frame carries.
const streamChunk = 16 << 10

// maxStreamWindow is the most a stream's receiver grants beyond what its
// application read, and so the most stream bytes the relay holds for one
// stream: a DATA frame beyond it resets the stream (overrun).
const maxStreamWindow = 4 << 20

// StreamWindow is the receive window of a relayed stream: what its sender
// may send before the receiver's application reads. 2 MiB keeps a stream
// at 100 Mbit/s across a 160 ms round trip.
const StreamWindow = 2 << 20

// CLOSE codes.
const (
	closeFin        = 0x00 // the end closed the stream (an orderly end)
	closeReset      = 0x01 // the end aborted it
	closeRefused    = 0x02 // the acceptor takes no relayed streams now
	closeNoPeer     = 0x03 // the peer is not linked to the relay
	closeNotAllowed = 0x04 // the peer has not consented to this node
	closeLimit      = 0x05 // the relay or the acceptor is at a stream limit
	closeGone       = 0x06 // the other end's link ended (or no such stream)
	closeOverrun    = 0x07 // a sender went beyond the window
	closeNotStream  = 0x08 // the peer's link is not a byte stream, or it takes no streams
	closeProtocol   = 0x09 // a malformed stream frame

	closeCodes = 0x0a // the codes above
)

// Named errors of relayed streams.
var (
	// ErrStreamsUnsupported: no relayed stream is possible on this link
	// (it is a UDP link, or the relay predates relayed streams), or the
	// peer's link is not a byte stream or takes none; the caller relays
	// QUIC packets instead.
	ErrStreamsUnsupported = errors.New("relay: relayed streams not supported on this pair of links")
	// ErrStreamRefused: the peer refused the stream (it takes no relayed
	// streams, or is at its limit).
	ErrStreamRefused = errors.New("relay: relayed stream refused by the peer")
	// ErrStreamReset: the other end (or the relay) aborted the stream:
	// its link ended, it sent beyond its window, or it reset it.
	ErrStreamReset = errors.New("relay: relayed stream reset")
	// ErrStreamClosed: the other end closed the stream; nothing more can
	// be written to it.
	ErrStreamClosed = errors.New("relay: relayed stream closed by the peer")
)

// closeErr is the error a stream end sees for a CLOSE code other than
// closeFin.
func closeErr(code byte) error {
	switch code {
	case closeRefused:
		return ErrStreamRefused
	case closeNoPeer:
		return ErrPeerNotConnected
	case closeNotAllowed:
		return ErrNotAllowed
	case closeLimit:
		return fmt.Errorf("%w: stream limit", ErrRelayFull)
	case closeNotStream:
		return ErrStreamsUnsupported
	case closeGone:
		return fmt.Errorf("%w: the other end's link ended", ErrStreamReset)
	case closeOverrun:
		return fmt.Errorf("%w: window overrun", ErrStreamReset)
	case closeProtocol:
		return fmt.Errorf("%w: %w", ErrStreamReset, ErrProtocol)
	}
	return ErrStreamReset
}

// streamRef is the peer and stream number of a stream frame.
type streamRef struct {
	peer identity.PeerID
	id   uint32
}

// parseStream splits a stream frame's body into its reference and the
// rest; false if it is too short.
func parseStream(body []byte) (streamRef, []byte, bool) {
	if len(body) < streamHeader {
		return streamRef{}, nil, false
	}
	return streamRef{identity.PeerID(body[:identityLen]), binary.BigEndian.Uint32(body[identityLen:streamHeader])},
		body[streamHeader:], true
}

// appendStreamFrame appends a stream frame of type typ about ref with
// rest as the rest of its body.
func appendStreamFrame(b []byte, typ byte, ref streamRef, rest []byte) []byte {
	var id [4]byte
	binary.BigEndian.PutUint32(id[:], ref.id)
	return appendFrame(b, typ, ref.peer[:], id[:], rest)
}

// windowBody is a WINDOW frame's limit.
func windowBody(limit uint64) []byte { return binary.BigEndian.AppendUint64(nil, limit) }

// maxBody is the largest body a frame of type typ may have.
func maxBody(typ byte) int {
	if typ == frameData {
		return streamHeader + streamChunk
	}
	return maxFrameBody
}
