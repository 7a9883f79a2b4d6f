package rendezvous

import "github.com/reachp2p/reach/internal/candidate"

// The introduction's payload: the addresses each side advertises. The
// types live in the leaf package internal/candidate, where the rungs read
// them with one set of filters; these names are the wire protocol's view.
type (
	// CandidateKind says where a candidate address came from.
	CandidateKind = candidate.Kind
	// Candidate is one address at which a peer might be reached.
	Candidate = candidate.Candidate
	// PeerInfo is what one side of an introduction tells the other: the
	// dialler's offer and the listener's answer.
	PeerInfo = candidate.PeerInfo
)

// Candidate kinds (see package candidate).
const (
	Host      = candidate.Host
	Reflexive = candidate.Reflexive
	Mapped    = candidate.Mapped
	Relay     = candidate.Relay
	Supernode = candidate.Supernode
	TURN      = candidate.TURN
	// TCPReflexive is stamped by the server only, for peers registered over TCP.
	TCPReflexive = candidate.TCPReflexive
)
