package holepunch

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

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
// address. Pings to a predicted port carry the primer TTL until it
// answers (Params.Predicted): they open our NAT and expire before the
// peer's router, so a wrong guess leaves no state there (on a Linux host
// it would take that port for flows from us, and the peer's NAT would
// move its next mapping past it). The peer's own pings, from its real
// mapping, then cross both NATs; we learn the address and answer at full
// TTL.

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

// predictTTL is the TTL of pings to predicted ports: the primer TTL, or
// none (full TTL) with primers off. A node with no NAT of its own (its
// server sees it at one of its interface addresses) sends them with TTL
// 1: they only need to open a firewall on the host or at its first hop,
// and a primer TTL from a public host reaches the peer's router itself
// (the lab's open host is one hop from a provider's router, two from
// the peer's), where on a Linux router every predicted port becomes a
// flow to the router and the peer's NAT then drops its own next flows on
// those ports: a sequential-symmetric linux-host dialler lost its direct
// path to an open listener that way, 3 of 3 dials to direct-tcp (the
// matrix, 2026-12-01).
func (r *Rung) predictTTL() int {
	switch {
	case r.PrimerTTL < 0:
		return 0
	case r.public():
		return 1
	case r.PrimerTTL == 0:
		return DefaultPrimerTTL
	}
	return r.PrimerTTL
}

// public reports whether the node has no NAT of its own: its server sees
// it at one of its interface addresses.
func (r *Rung) public() bool {
	if r.h.Observed == nil || r.h.InterfaceAddrs == nil {
		return false
	}
	obs := r.h.Observed()
	if !obs.IsValid() {
		return false
	}
	addrs, err := r.h.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		var ip netip.Addr
		switch v := a.(type) {
		case *net.IPNet:
			ip, _ = netip.AddrFromSlice(v.IP)
		case *net.IPAddr:
			ip, _ = netip.AddrFromSlice(v.IP)
		}
		if ip.Unmap() == obs.Addr().Unmap() {
			return true
		}
	}
	return false
}

// setPredicted marks addrs as predicted: their pings carry ttl until they
// answer (ttl 0: full TTL, nothing to mark).
func (a *Attempt) setPredicted(addrs []netip.AddrPort, ttl int) {
	if ttl <= 0 {
		return
	}
	for _, r := range addrs {
		a.predicted[netip.AddrPortFrom(r.Addr().Unmap(), r.Port())] = ttl
	}
}

// AddPredicted adds predicted addresses to a running attempt (see
// Params.Predicted) and pings the new ones at once.
func (a *Attempt) AddPredicted(addrs []netip.AddrPort, ttl int) {
	a.mu.Lock()
	a.setPredicted(addrs, ttl)
	a.mu.Unlock()
	a.AddRemotes(addrs)
}

// sendTTL sends r a ping with the given TTL, within the node's rate (the
// caller counted it against the attempt's budget).
func (a *Attempt) sendTTL(tw ttlWriter, r netip.AddrPort, ttl int) {
	if !a.m.bucket.take(time.Now()) {
		a.m.throttled.Add(1)
		return
	}
	pk := &packet{typ: typePing, role: a.p.Role, attempt: a.p.Attempt, txid: a.txid(r)}
	if err := tw.WriteToTTL(pk.marshal(a.p.Key), r, ttl); err != nil {
		a.m.log.Debug("holepunch: predicted ping", "to", r, "ttl", ttl, "err", err)
	}
}
