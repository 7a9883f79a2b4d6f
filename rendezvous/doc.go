// Package rendezvous is reach's signalling service and its client.
//
// A node keeps one registration open with a rendezvous server: a QUIC
// connection on the node's shared UDP socket (so the server sees the node's
// real NAT mapping), or TLS 1.3 over TCP where UDP is blocked. Both carry
// the same stream of frames (see docs/protocol.md, "Rendezvous"). The TLS
// handshake is the registration's signature: the client certificate is the
// peer's Ed25519 key, so nobody can register an ID whose key they lack.
//
// A dialler asks the server to introduce it to another peer with
// Client.Connect; the server forwards the offer (with the reflexive address
// it observed on the dialler's UDP connection) to the target, whose
// Client.Incoming channel yields an Introduction to Accept or Reject, and
// relays the answer back. Failures are named at once: ErrUnknownPeer,
// ErrPeerOffline, ErrTimeout, ErrRejected.
//
// The server's UDP port also answers STUN binding requests (RFC 8489), read
// with quic.Transport.ReadNonQUICPacket beside the QUIC listener.
//
// The server bounds what each source (an IPv4 address, an IPv6 /64) and
// each peer ID may cost it: rates of new connections, registrations,
// introductions and STUN requests, QUIC Retry under load, caps on
// handshakes in progress (ServerConfig.Limits). A refused registration or
// introduction is ErrRateLimited; excess STUN and handshakes are dropped.
//
// Servers are named by connect strings, reach://<server-peer-id>@host:port,
// which pin the server's key (see ParseServerAddr).
package rendezvous

import (
	"errors"
	"fmt"

	"github.com/reachp2p/reach/identity"
)

// ALPN is the TLS application protocol of the signalling connection, on
// QUIC and on TCP alike.
const ALPN = "reach-rdv/1"

// DefaultPort is the server's default UDP and TCP port.
const DefaultPort = 4950

// Named errors. Test with errors.Is.
var (
	// ErrUnknownPeer: the target of a Connect has never registered with
	// the server.
	ErrUnknownPeer = errors.New("rendezvous: unknown peer")
	// ErrPeerOffline: the target registered before but is not connected now.
	ErrPeerOffline = errors.New("rendezvous: peer is offline")
	// ErrTimeout: the target did not answer an introduction in time.
	ErrTimeout = errors.New("rendezvous: peer did not answer in time")
	// ErrNotWoken: the target's registration was parked (idle, without
	// a connection: ParkConfig) and the node did not come back within
	// the server's WakeTimeout after the server woke it. It also matches
	// ErrTimeout.
	ErrNotWoken = fmt.Errorf("%w: the parked peer did not wake", ErrTimeout)
	// ErrRejected: the target rejected the introduction (see RejectedError
	// for its reason).
	ErrRejected = errors.New("rendezvous: peer rejected the connection")
	// ErrBusy: the server refused because a limit was reached (too many
	// peers, too many pending introductions).
	ErrBusy = errors.New("rendezvous: server busy")
	// ErrRateLimited: the server refused a registration or an
	// introduction because its sender (its address or peer ID) went over a
	// rate limit (ServerConfig.Limits). It also matches ErrBusy. Retry
	// later, after a back-off.
	ErrRateLimited error = rateLimitedError{}
	// ErrBadRequest: the server found a request invalid (for example an
	// offer with too many candidates).
	ErrBadRequest = errors.New("rendezvous: bad request")
	// ErrProtocol: a frame broke the wire protocol; the connection that
	// sent it is closed. See ProtocolError.
	ErrProtocol = errors.New("rendezvous: protocol error")
	// ErrNoServer: Start could not register with any server. See
	// NoServerError for each server's error.
	ErrNoServer = errors.New("rendezvous: no server answered")
	// ErrServerLost: the connection to the server broke while a request
	// was outstanding (the client reconnects in the background).
	ErrServerLost = errors.New("rendezvous: connection to server lost")
	// ErrReplaced: another registration of the same peer ID (a newer
	// connection with the same key) replaced this one at the server.
	ErrReplaced = errors.New("rendezvous: registration replaced by a newer one")
	// ErrClosed: the client or server was closed.
	ErrClosed = errors.New("rendezvous: closed")
	// ErrBadServerAddr: a connect string is malformed.
	ErrBadServerAddr = errors.New("rendezvous: malformed server connect string")
	// ErrAnswered: Accept or Reject was called on an introduction that was
	// already answered.
	ErrAnswered = errors.New("rendezvous: introduction already answered")
)

// rateLimitedError is ErrRateLimited: a kind of ErrBusy.
type rateLimitedError struct{}

func (rateLimitedError) Error() string { return "rendezvous: rate limited by the server" }
func (rateLimitedError) Unwrap() error { return ErrBusy }

// ProtocolError is a broken-protocol condition, sent or received as an
// ERROR frame. It unwraps to ErrProtocol, or to ErrReplaced, ErrBusy or
// ErrRateLimited for those codes.
type ProtocolError struct {
	Code   string // machine-readable, see docs/protocol.md
	Reason string // human-readable detail
}

func (e *ProtocolError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("rendezvous: protocol error %s", e.Code)
	}
	return fmt.Sprintf("rendezvous: protocol error %s: %s", e.Code, e.Reason)
}

// Unwrap returns the named error for the code.
func (e *ProtocolError) Unwrap() error {
	switch e.Code {
	case codeReplaced:
		return ErrReplaced
	case codeBusy:
		return ErrBusy
	case codeRateLimited:
		return ErrRateLimited
	case codeShutdown:
		return ErrServerLost
	}
	return ErrProtocol
}

// ConnectError is returned by Client.Connect when the server or the target
// refused the introduction. It unwraps to ErrUnknownPeer, ErrPeerOffline,
// ErrTimeout, ErrRejected, ErrBusy, ErrRateLimited, ErrRegistryUnavailable or
// ErrBadRequest.
// ReasonReregistered is the Reason of an ErrPeerOffline whose target
// moved to a new connection (it re-registered, say from TCP to QUIC) while
// the introduction was on its way: the peer is online, and a new
// introduction reaches it.
const ReasonReregistered = "peer re-registered before answering"

type ConnectError struct {
	Peer   identity.PeerID
	Code   string // the RESULT frame's error code
	Reason string // the target's reject reason, or the server's detail
}

func (e *ConnectError) Error() string {
	msg := fmt.Sprintf("rendezvous: connect to %s: %v", e.Peer.Short(), e.Unwrap())
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// Unwrap returns the named error for the code.
func (e *ConnectError) Unwrap() error {
	switch e.Code {
	case codeUnknownPeer:
		return ErrUnknownPeer
	case codePeerOffline:
		return ErrPeerOffline
	case codeTimeout:
		return ErrTimeout
	case codeNotWoken:
		return ErrNotWoken
	case codeRejected:
		return ErrRejected
	case codeBusy:
		return ErrBusy
	case codeRateLimited:
		return ErrRateLimited
	case codeRegistryUnavailable:
		return ErrRegistryUnavailable
	}
	return ErrBadRequest
}

// NoServerError lists why each server failed. It matches ErrNoServer with
// errors.Is and unwraps to the per-server errors, so
// errors.Is(err, identity.ErrWrongPeer) also works.
type NoServerError struct {
	Servers []ServerAddr
	Errs    []error // Errs[i] is Servers[i]'s error
}

func (e *NoServerError) Error() string {
	msg := ErrNoServer.Error()
	for i, err := range e.Errs {
		msg += fmt.Sprintf("; %s: %v", e.Servers[i].UDPHostPort(), err)
	}
	return msg
}

// Is reports whether target is ErrNoServer.
func (e *NoServerError) Is(target error) bool { return target == ErrNoServer }

// Unwrap returns the per-server errors.
func (e *NoServerError) Unwrap() []error { return e.Errs }
