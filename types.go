package reach

import (
	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/stream"
	"github.com/reachp2p/reach/supernode"
	"github.com/reachp2p/reach/turn"
	"github.com/reachp2p/reach/upnp"
)

// The types a user of reach handles, under their reach names, so that one
// import is enough for the common cases.
type (
	// PeerID is a peer's identity: the printable encoding of its Ed25519
	// public key (ParsePeerID reads one, and checks its checksum).
	PeerID = identity.PeerID
	// Key is a node's Ed25519 key (GenerateKey, LoadKey).
	Key = identity.Key
	// Session is an authenticated session to one peer: open and accept
	// streams on it. Strategy() names the rung that carries it.
	Session = stream.Session
	// Stream is one reliable, ordered byte stream of a session; a
	// net.Conn whose RemoteAddr().String() is the peer ID.
	Stream = stream.Stream
	// SessionConfig tunes QUIC sessions (keepalive, windows, timeouts).
	SessionConfig = stream.Config
	// RaceError is the error of a dial whose rungs all failed: it
	// unwraps to each rung's error.
	RaceError = rung.RaceError
	// PortMappingConfig tunes the port mapper (Config.PortMapping).
	PortMappingConfig = upnp.Config
	// PortMappingStatus is the port mapper's state (Status.PortMapping).
	PortMappingStatus = upnp.Status
	// SupernodeConfig makes a node volunteer as a supernode
	// (Config.Supernode).
	SupernodeConfig = supernode.Config
	// SupernodeStatus is the node's supernode side (Status.Supernode).
	SupernodeStatus = supernode.Status
	// TURNServer is a standard TURN server a node may relay through
	// (Config.TURN).
	TURNServer = turn.Server
)

// ParsePeerID reads a printable peer ID.
func ParsePeerID(s string) (PeerID, error) { return identity.ParsePeerID(s) }

// GenerateKey makes a fresh node key.
func GenerateKey() (*Key, error) { return identity.GenerateKey() }

// TURNCredentials derives TURN REST API credentials (the scheme coturn's
// use-auth-secret implements) for user from the shared secret; see
// turn.Credentials.
var TURNCredentials = turn.Credentials

// ErrNoTURN: the TURN rung had nothing to work with (no allocation, or
// the peer advertised no TURN address).
var ErrNoTURN = turn.ErrNoTURN

// What a stream's Read or Write returns after the peer closed or aborted
// it (a *PeerError; test with errors.Is), and what Close returns when the
// peer did not read everything in time; see stream.PeerError.
var (
	ErrPeerClosed      = stream.ErrPeerClosed
	ErrPeerAborted     = stream.ErrPeerAborted
	ErrPeerInterrupted = stream.ErrPeerInterrupted
	ErrCloseTimeout    = stream.ErrCloseTimeout
)

// PeerError is the error of a Read or Write after the peer aborted the
// stream or closed the session, with the peer's error code.
type PeerError = stream.PeerError
