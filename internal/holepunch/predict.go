package holepunch

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/reachp2p/reach/internal/candidate"
)

// Port prediction. A peer behind a symmetric NAT gets a new public port
// for every destination, so its packets to us come from a port that none
// of its candidates names, and a NAT on our side that filters by address
// and port (port-restricted) drops them. When the peer measured that its
// NAT allocates ports in sequence (candidate.PortAllocation, carried by
// the introduction), the port its mapping towards us gets is one of the
// next few after the last it saw: we punch those too, so our NAT lets its
// packets in; then its pings reach us, we learn the address and answer,
// and the checks validate it as for any peer-reflexive address.
//
// Bounds: it runs only on an introduction from the server (signed
// registrations on both sides, the punch key of the attempt), for at most
// Limits.PredictPorts ports (default candidate.DefaultPredictPorts, never
// more than candidate.MaxPredictPorts) on the peer's own reflexive
// address, inside the attempt's packet budget (Limits.AttemptPackets, all
// addresses together) and the node's packet rate; a predicted port that
// does not answer gets pings only during its early phase, like any
// address. A listener sends only TTL-limited primers to them until the
// dialler is heard (Params.Hold), so a wrong guess leaves no state on the
// peer's router.

// predicted returns the peer's next ports to punch, per the rung's
// limits (none with Limits.PredictPorts negative).
func (r *Rung) predicted(peer candidate.PeerInfo) []netip.AddrPort {
	if r.limits.PredictPorts < 0 {
		return nil
	}
	p := peer.Predicted(r.scope(), r.limits.PredictPorts)
	if len(p) > 0 {
		r.h.Logger.Debug("holepunch: port prediction", "peer", peer.Peer.Short(), "allocation", peer.Ports.String(),
			"last", peer.Ports.Last, "first", p[0], "ports", len(p))
	}
	return p
}

// predictionDetail is a dialler's session's strategy detail when port
// prediction had a part in the path: local is what we told the peer,
// remote what it answered, predicted the ports of the peer we punched, won
// the address the session runs to.
func predictionDetail(local, remote candidate.PeerInfo, predicted []netip.AddrPort, won netip.AddrPort) string {
	switch {
	case len(predicted) > 0 && slices.Contains(predicted, won):
		return fmt.Sprintf("port prediction: the peer's NAT allocates ports %s; punched its next %d ports, and port %d answered",
			remote.Ports, len(predicted), won.Port())
	case len(predicted) > 0:
		return fmt.Sprintf("port prediction: the peer's NAT allocates ports %s; punched its next %d ports", remote.Ports, len(predicted))
	case local.Mapping == candidate.MappingVaries && local.Ports.Sequential() && remote.Mapping != candidate.MappingVaries:
		return fmt.Sprintf("port prediction: our NAT allocates ports %s; the peer punched our next ports", local.Ports)
	}
	return ""
}
