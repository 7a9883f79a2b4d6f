package reach

import (
	"context"
	"net/netip"

	"github.com/reachp2p/reach/internal/ladder"
	"github.com/reachp2p/reach/rendezvous"
)

// Status is a snapshot of what a node is and knows: its addresses, its
// server, its sessions, and what each rung reports (the embedded
// rung status: PortMapping, Supernode, TURN, RelayTransport, TCPListener
// and TCP).
type Status struct {
	// ID is the node's peer ID.
	ID PeerID
	// LocalAddr is the node's UDP socket address.
	LocalAddr netip.AddrPort
	// Server is the connect string of the server it is registered with
	// now ("" without servers or while it reconnects); Observed its
	// public UDP address as that server sees it (invalid over TCP).
	Server   string
	Observed netip.AddrPort
	// Mapping is how the node's NAT maps its socket (Node.Mapping).
	Mapping string
	// Allocation is how the node's symmetric NAT allocates public ports
	// (Node.Allocation): "sequential +N", "random", "" unknown.
	Allocation string
	// Sessions are the node's open sessions.
	Sessions []*Session
	ladder.Status
}

// Status reports the node's state. It does not block on the network.
func (n *Node) Status() Status {
	return Status{
		ID: n.ID(), LocalAddr: n.LocalAddr(), Server: n.Server(), Observed: n.Observed(),
		Mapping: n.Mapping(), Allocation: n.Allocation(), Sessions: n.Sessions(), Status: n.ladder.Status(),
	}
}

// WaitSupernode waits for the current server's verdict on the node's
// volunteer offer (Config.Supernode): the admission, or a
// *rendezvous.VolunteerError (errors.Is rendezvous.ErrNotAdmitted).
// Without Config.Supernode.Enable it returns rendezvous.ErrNotAdmitted at
// once. ctx bounds the wait (an old server that does not know supernodes
// never answers).
func (n *Node) WaitSupernode(ctx context.Context) (rendezvous.VolunteerStatus, error) {
	return n.ladder.WaitSupernode(ctx)
}
