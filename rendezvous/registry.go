package rendezvous

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net/netip"

	"github.com/reachp2p/reach/identity"
)

// A fleet of servers (docs/architecture.md, "Fleet") shares registrations
// and introductions through a Registry. Without one (ServerConfig.Registry
// nil) a server knows only its own peers, in memory.

// ErrRegistryUnavailable: the target of a Connect is not registered with
// this server, and the fleet's shared registry (Redis) could not be asked
// where it is. The server goes on serving its own peers; retry later.
var ErrRegistryUnavailable = errors.New("rendezvous: fleet registry unavailable")

// codeRegistryUnavailable is the RESULT error code of ErrRegistryUnavailable.
const codeRegistryUnavailable = "registry_unavailable"

// Registry is what the servers of a fleet share: which server each peer is
// registered with, and a way to hand an introduction to that server. Its
// methods must be safe for concurrent use and must not block for long:
// Register and Unregister not at all (they queue), Lookup and Introduce no
// longer than their context allows.
type Registry interface {
	// Run serves the registry for the server instance self until ctx
	// ends: it delivers introductions addressed to self to h, and keeps
	// self's registrations (h.LocalPeers) and liveness fresh.
	Run(ctx context.Context, self string, h FleetHandler) error
	// Register records that peer is registered with this server; it
	// must not wait for the shared store.
	Register(peer identity.PeerID)
	// Unregister records that peer left this server (unless it has
	// registered with another one since); it must not wait.
	Unregister(peer identity.PeerID)
	// Lookup returns the instance ID of peer's home server. Errors:
	// ErrUnknownPeer (no live registration), or one wrapping
	// ErrRegistryUnavailable.
	Lookup(ctx context.Context, peer identity.PeerID) (string, error)
	// Introduce hands in to the server instance home and waits for its
	// result. Errors: ErrPeerOffline (home is not running), ErrBusy (too
	// many introductions in flight), ErrTimeout (no result before ctx
	// ended), or one wrapping ErrRegistryUnavailable.
	Introduce(ctx context.Context, home string, in FleetIntro) (FleetResult, error)
}

// ServerLister is a Registry that can say which other servers of the
// fleet are alive: the server passes their connect strings to its
// clients (REGISTERED), which fail over to them.
type ServerLister interface {
	// LiveServers returns the connect strings of the fleet's live
	// servers other than this one; errors wrap ErrRegistryUnavailable.
	LiveServers(ctx context.Context) ([]string, error)
}

// FleetHandler is the server as its Registry sees it.
type FleetHandler interface {
	// LocalPeers lists the peers registered with this server now.
	LocalPeers() []identity.PeerID
	// Introduce delivers an introduction from another server of the
	// fleet; reply is called once with its result (it may be called
	// before Introduce returns, and must not block).
	Introduce(in FleetIntro, reply func(FleetResult))
}

// FleetIntro is an introduction handed from the dialler's server to the
// target's home server.
type FleetIntro struct {
	Target identity.PeerID `json:"target"`
	// Offer is the dialler's offer as its server completed it (Peer,
	// Observed, reflexive candidate).
	Offer PeerInfo `json:"offer"`
	// Source is the dialler's source prefix, for the per-source limits.
	Source netip.Prefix `json:"source,omitzero"`
}

// FleetResult is the outcome of a FleetIntro: the target's answer, or an
// error code of a RESULT frame with its reason.
type FleetResult struct {
	Answer *PeerInfo `json:"answer,omitempty"`
	Code   string    `json:"code,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

// newInstanceID returns a random server instance ID: servers of a fleet
// may share a key, and a restarted server must not be taken for the
// process it replaced.
func newInstanceID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Instance returns the server's instance ID in its fleet (random, new
// every process).
func (s *Server) Instance() string { return s.instance }

// LocalPeers implements FleetHandler.
func (s *Server) LocalPeers() []identity.PeerID {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]identity.PeerID, 0, len(s.peers))
	for id := range s.peers {
		out = append(out, id)
	}
	return out
}
