package natlab

import (
	"context"
	"fmt"
	"net/netip"
)

// AddISP builds an access router of a provider: a plain router (no NAT,
// no filtering) between the internet and a public segment of its own,
// 198.18.N.0/24, where customers' routers attach (RouterConfig.Upstream,
// or SiteConfig.ISP). Real home and cloud routers are never neighbours on
// one wire: the provider's routers between them decrement the TTL, which
// is what lets a punch packet with a small TTL open the sender's NAT and
// die before it reaches the peer's router. The internet reaches the
// segment through the ISP's proxy ARP (the internet segment is on-link
// for every address), answered at once: Linux delays proxy ARP replies by
// a random 0-0.8 s by default (proxy_delay), which a routed provider does
// not do and which held up the first packets from every new neighbour.
// IPv4 only.
func (l *Lab) AddISP(ctx context.Context, name string) (*Network, error) {
	if name == "" {
		return nil, fmt.Errorf("natlab: ISP needs a name")
	}
	l.mu.Lock()
	l.nextNet++
	n := l.nextNet
	l.mu.Unlock()
	prefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(n), 0}), 24)
	wan4, _, err := l.inet.allocate()
	if err != nil {
		return nil, err
	}
	h := &Host{lab: l, name: name, ns: l.nsName(name), net: l.inet, addr4: wan4}
	if err := l.addNS(ctx, h.ns); err != nil {
		return nil, err
	}
	if err := l.inet.link(ctx, h.ns, "wan", wan4, netip.Addr{}); err != nil {
		return nil, err
	}
	if err := l.inet.defaultRoutes(ctx, h.ns, "wan", true); err != nil {
		return nil, err
	}
	seg := &Network{lab: l, name: name, ns: h.ns, bridge: "lan", v4: prefix, gw4: prefix.Addr().Next(), next: 10}
	for _, s := range [][]string{
		{"ip", "-n", h.ns, "link", "add", "lan", "type", "bridge"},
		{"ip", "-n", h.ns, "addr", "add", netip.PrefixFrom(seg.gw4, prefix.Bits()).String(), "dev", "lan"},
		{"ip", "-n", h.ns, "link", "set", "lan", "up"},
	} {
		if err := run(ctx, s...); err != nil {
			return nil, err
		}
	}
	if err := sysctl(ctx, h.ns, "net.ipv4.ip_forward", "1", "net.ipv4.conf.wan.proxy_arp", "1", "net.ipv4.neigh.wan.proxy_delay", "0"); err != nil {
		return nil, err
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	l.log.Debug("ISP added", "isp", name, "wan", wan4, "segment", prefix)
	return seg, nil
}

// SiteConfig describes a peer's place beyond its NAT kind.
type SiteConfig struct {
	// Kind is the NAT kind (Open: a public host, no router).
	Kind Kind
	// Firewall is the variant of the site's router (and, for a double
	// NAT, of the home router; the carrier's stays Home, as carrier NATs
	// do not deliver unsolicited packets to themselves). Zero: Home.
	Firewall Firewall
	// ISP puts an access router of the site's own provider between the
	// site and the internet (see AddISP). Zero: the site's router (or
	// host) sits on the internet segment itself.
	ISP bool
	// IPv6 gives the site's LAN a routed IPv6 prefix behind the router's
	// stateful firewall (RouterConfig.IPv6): dual-stack. Not with ISP or
	// a double NAT.
	IPv6 bool
	// IPv6Only makes the site IPv6 only: its host has an IPv6 address and
	// no IPv4 address or route, behind a router that has no IPv4 either
	// (RouterConfig.IPv6Only: a stateful IPv6 firewall of the Firewall
	// variant; Kind says only what it lets out). With Open, a public host
	// with only an IPv6 address. Not with ISP or a double NAT.
	IPv6Only bool
}

// AddSiteWith builds a peer host named name as cfg says (its router, if
// any, is name+"r"; a double NAT's carrier is name+"rcg"; its ISP is
// name+"isp").
func (l *Lab) AddSiteWith(ctx context.Context, name string, cfg SiteConfig) (*Site, error) {
	s := &Site{Kind: cfg.Kind}
	if (cfg.IPv6 || cfg.IPv6Only) && (cfg.ISP || cfg.Kind == KindDouble) {
		return nil, fmt.Errorf("natlab: site %s: IPv6 with an ISP or a double NAT is not modelled", name)
	}
	var up *Network
	if cfg.ISP {
		var err error
		if up, err = l.AddISP(ctx, name+"isp"); err != nil {
			return nil, err
		}
	}
	var err error
	switch cfg.Kind {
	case Open:
		net := up
		if net == nil {
			net = l.inet
		}
		s.Host, err = net.addHost(ctx, name, cfg.IPv6Only)
		return s, err
	case KindDouble:
		var cg *Router
		if cg, err = l.AddRouter(ctx, RouterConfig{Name: name + "rcg", NAT: PortRestricted, Carrier: true, Upstream: up}); err != nil {
			return nil, err
		}
		s.Router, err = l.AddRouter(ctx, RouterConfig{Name: name + "r", NAT: PortRestricted, Upstream: cg.LAN(), Firewall: cfg.Firewall})
	default:
		s.Router, err = l.AddRouter(ctx, RouterConfig{Name: name + "r", NAT: NAT(cfg.Kind), Upstream: up, Firewall: cfg.Firewall,
			IPv6: cfg.IPv6, IPv6Only: cfg.IPv6Only})
	}
	if err != nil {
		return nil, err
	}
	s.Host, err = s.Router.AddHost(ctx, name)
	return s, err
}
