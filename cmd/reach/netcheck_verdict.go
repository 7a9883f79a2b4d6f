package main

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/sock"
)

// errNoUDPAnswer: no server answered a STUN request over UDP (netcheck
// exits 1 after its report).
var errNoUDPAnswer = errors.New("no server answered over UDP (UDP blocked? reach signals and relays over TCP, port 443 too)")

// allocationSockets is how many fresh sockets allocation asks from, each
// both ports of one server, one after the other.
const allocationSockets = 3

// allocation tells how a NAT whose mapping varies picks public ports:
// fresh sockets ask two endpoints each (a reach server's two ports, or the
// first two that answered), one after the other, and the ports they are
// given are compared. "sequential +N" when each new mapping is N above
// the previous one (give or take one, for other traffic through the same
// NAT), "random" otherwise, "" when too few answers came.
func allocation(ctx context.Context, eps []netcheckEndpoint, timeout time.Duration, log *slog.Logger) string {
	var targets []netip.AddrPort
	for _, ep := range eps {
		if a, err := netip.ParseAddrPort(ep.Addr); err == nil && ep.UDP && a.Addr().Unmap().Is4() && len(targets) < 2 {
			targets = append(targets, a)
		}
	}
	if len(targets) < 2 {
		return ""
	}
	var ports []int
	var ip netip.Addr
	for range allocationSockets {
		s, err := sock.Listen(sock.Config{Logger: log})
		if err != nil {
			return ""
		}
		for _, to := range targets {
			sctx, cancel := context.WithTimeout(ctx, timeout)
			got, err := s.STUN(sctx, to)
			cancel()
			if err != nil {
				s.Close()
				return ""
			}
			if !ip.IsValid() {
				ip = got.Addr()
			}
			if got.Addr() != ip {
				s.Close()
				return "random (the public address changes too)"
			}
			ports = append(ports, int(got.Port()))
		}
		s.Close()
	}
	return classifyPorts(ports)
}

// classifyPorts names the allocation behind ports, the public ports of
// successive new mappings ("sequential +N", "random", "" for too few).
func classifyPorts(ports []int) string {
	a, ok := candidate.ClassifyPorts(ports)
	if !ok {
		return ""
	}
	return a.String()
}

// natSummary names the NAT from its mapping and allocation, as the
// report's nat field does.
func natSummary(varies bool, allocation string) string {
	switch {
	case !varies:
		return "endpoint-independent"
	case allocation == "":
		return "symmetric"
	case strings.HasPrefix(allocation, "random"):
		return "symmetric, random"
	}
	return "symmetric, " + allocation
}

// verdict says in one line what will connect from here.
func verdict(r *netcheckReport) string {
	v := verdict4(r)
	if ipv6Direct(r) && !strings.HasPrefix(v, "direct") {
		v += "; over IPv6, peers that have it reach this host directly (no NAT)"
	}
	return v
}

// verdict4 is the verdict without IPv6.
func verdict4(r *netcheckReport) string {
	udp := false
	for _, ep := range r.Endpoints {
		udp = udp || ep.UDP
	}
	public := false
	for _, p := range r.Public {
		ap, err := netip.ParseAddrPort(p)
		if err != nil {
			continue
		}
		for _, l := range r.Local {
			if pfx, err := netip.ParsePrefix(l); err == nil && pfx.Addr().Unmap() == ap.Addr() {
				public = true
			}
		}
	}
	tcp := tcpWorks(r)
	switch {
	case !udp && tcp != nil:
		return "relay only: no UDP answer, but TCP to " + tcp.Addr + " works (reach signals and relays over it)"
	case !udp && len(r.TCP) > 0:
		return "nothing connects from here: no server answered over UDP or TCP"
	case !udp:
		return "relay only: no UDP answer (reach signals and relays over TCP and TLS on 443)"
	case public:
		return "direct: this host is reachable at its own address"
	case r.PortMapping.External != "":
		return "direct: peers reach this host through the port mapping"
	case r.MappingVaries == nil:
		return "hole punching likely works (add --stun HOST:PORT, or use a server with its alternate STUN port, to be sure)"
	case !*r.MappingVaries:
		return "hole punching works with peers behind most NATs; the relay carries the rest"
	case r.Allocation != "" && r.Allocation != "random" && r.Allocation[0] == 's':
		return "symmetric NAT, " + r.Allocation + ": hole punching works with peers on open or cone NATs (they punch its next ports); the relay (or a supernode) carries the rest"
	default:
		return "symmetric NAT: hole punching works only with peers on open or full-cone NATs; the relay (or a supernode) carries the rest"
	}
}
