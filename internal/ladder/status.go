package ladder

import (
	"context"
	"net/netip"

	"github.com/reachp2p/reach/internal/directtcp"
	"github.com/reachp2p/reach/relay"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/supernode"
	"github.com/reachp2p/reach/turn"
	"github.com/reachp2p/reach/upnp"
)

// Status is what the rungs report about the node.
type Status struct {
	// PortMapping is the port mapper's state: the protocol the gateway
	// speaks, the mapped public address and its lease, or why there is
	// none (Err: upnp.ErrNoGateway, upnp.ErrPrivateExternal, a gateway's
	// refusal). Zero when port mapping is off.
	PortMapping upnp.Status
	// TCPPortMapping is the same for the node's TCP listener (the zero
	// Status without one).
	TCPPortMapping upnp.Status
	// Supernode is the node's supernode side: whether it volunteers and
	// is admitted, whom it forwards for, the volunteers it uses.
	Supernode supernode.Status
	// TURN is the node's relayed address on its TURN server; zero while
	// it has none.
	TURN netip.AddrPort
	// RelayTransport is the transport of the node's link to its relay
	// ("udp", "tls", "ws"); "" while it has none.
	RelayTransport string
	// TCPListener is the address of the node's TCP listener (direct-tcp;
	// the UDP socket's port number unless it was taken); invalid without
	// one. TCP counts what it did with the connections it accepted.
	TCPListener netip.AddrPort
	TCP         directtcp.ListenerStats
}

// Status asks each rung that reports something.
func (l *Ladder) Status() Status {
	var st Status
	for _, r := range l.All {
		switch r := r.(type) {
		case *upnp.Rung:
			st.PortMapping, st.TCPPortMapping = r.Status(), r.TCPStatus()
		case *supernode.Rung:
			st.Supernode = r.Status()
		case *turn.Rung:
			st.TURN = r.Addr()
		case *relay.Rung:
			st.RelayTransport = r.Transport()
		case *directtcp.Rung:
			if l := r.Listener(); l != nil {
				st.TCPListener, st.TCP = l.Addr(), l.Stats()
			}
		}
	}
	return st
}

// WaitSupernode waits for the current server's verdict on the node's
// volunteer offer (supernode.Rung.Wait).
func (l *Ladder) WaitSupernode(ctx context.Context) (rendezvous.VolunteerStatus, error) {
	for _, r := range l.All {
		if r, ok := r.(*supernode.Rung); ok {
			return r.Wait(ctx)
		}
	}
	return rendezvous.VolunteerStatus{}, rendezvous.ErrNotAdmitted
}
