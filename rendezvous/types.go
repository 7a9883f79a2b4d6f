package rendezvous

import (
	"net/netip"

	"github.com/reachp2p/reach/identity"
)

// CandidateKind says where a candidate address came from.
type CandidateKind string

// Candidate kinds, in the order strategies usually prefer them.
const (
	// Host: an address of one of the peer's own interfaces.
	Host CandidateKind = "host"
	// Reflexive: the peer's public address as a server saw it (STUN or the
	// rendezvous connection on the shared socket).
	Reflexive CandidateKind = "srflx"
	// Mapped: an address a port-mapping gateway (UPnP, NAT-PMP, PCP) granted.
	Mapped CandidateKind = "mapped"
	// Relay: an address on a relay that forwards to the peer.
	Relay CandidateKind = "relay"
	// Supernode: a volunteer (a peer with open ports) that forwards
	// between the two peers. Only the server adds these, with Peer (the
	// volunteer's key) and Token (the recipient's pass to link to it).
	Supernode CandidateKind = "supernode"
)

// Candidate is one address at which a peer might be reached.
type Candidate struct {
	Addr netip.AddrPort `json:"addr"`
	Kind CandidateKind  `json:"kind"`
	// Peer is the key at Addr, for Supernode candidates; zero otherwise.
	Peer identity.PeerID `json:"peer,omitzero"`
	// Token lets the recipient link to the Supernode candidate's
	// volunteer (see NewSupernodeToken); empty otherwise.
	Token string `json:"token,omitempty"`
}

// PeerInfo is what one side of an introduction tells the other: the
// dialler's offer and the listener's answer.
type PeerInfo struct {
	// Peer is the sender's ID. The server fills it in from the sender's
	// authenticated connection; a value the sender puts here is ignored.
	Peer identity.PeerID `json:"peer"`
	// Candidates are the sender's addresses. The server appends the
	// reflexive address it observed on the sender's UDP connection, if any.
	Candidates []Candidate `json:"candidates"`
	// PunchKey is 32 random bytes chosen by the dialler for this attempt
	// and echoed by the listener; punch packets carry a MAC under it.
	PunchKey []byte `json:"punch_key,omitempty"`
	// Attempt identifies one introduction; chosen by the dialler, echoed.
	Attempt uint64 `json:"attempt"`
	// WantSupernodes, in an offer, asks the server for volunteers: it adds
	// Supernode candidates to the offer it forwards and to the answer.
	WantSupernodes bool `json:"want_supernodes,omitempty"`
}

// Addrs returns the distinct usable addresses (valid, non-zero port) of
// the candidates of kind k, in the order given.
func (p PeerInfo) Addrs(k CandidateKind) []netip.AddrPort {
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{}
	for _, c := range p.Candidates {
		if c.Kind != k || !c.Addr.IsValid() || c.Addr.Port() == 0 || seen[c.Addr] {
			continue
		}
		seen[c.Addr] = true
		out = append(out, c.Addr)
	}
	return out
}
