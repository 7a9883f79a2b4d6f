package reach

import (
	"net"
	"net/netip"

	"github.com/reachp2p/reach/rendezvous"
)

// hostCandidates lists an address for every usable interface address on
// port: IPv4 and IPv6 global and private unicast addresses (no link-local:
// they need a zone and rarely help). Loopback addresses are included only
// with loopback true (everything on one machine, as in the demo).
func hostCandidates(addrs []net.Addr, port uint16, loopback bool, v6 bool) []rendezvous.Candidate {
	var out []rendezvous.Candidate
	seen := map[netip.Addr]bool{}
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr().Unmap()
		switch {
		case seen[ip], ip.IsLinkLocalUnicast(), ip.IsMulticast(), ip.IsUnspecified():
			continue
		case ip.IsLoopback() && !loopback:
			continue
		case ip.Is6() && !v6:
			continue
		}
		seen[ip] = true
		out = append(out, rendezvous.Candidate{Addr: netip.AddrPortFrom(ip, port), Kind: rendezvous.Host})
	}
	return out
}
