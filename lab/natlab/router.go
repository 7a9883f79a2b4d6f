package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// NAT is a router's behaviour, in the terms of RFC 4787 and the brief's
// table.
type NAT string

// The router behaviours the lab builds.
const (
	// FullCone: endpoint-independent mapping (the LAN port is kept) and
	// endpoint-independent filtering: once a LAN host has sent from a port,
	// anyone may send to the mapped port.
	FullCone NAT = "full-cone"
	// RestrictedCone: endpoint-independent mapping, address-dependent
	// filtering: replies get in from any port of a host the LAN host has
	// sent to.
	RestrictedCone NAT = "restricted-cone"
	// PortRestricted: endpoint-independent mapping, address-and-port-
	// dependent filtering. Plain Linux masquerade.
	PortRestricted NAT = "port-restricted"
	// Symmetric: address-and-port-dependent mapping with random external
	// ports, address-and-port-dependent filtering.
	Symmetric NAT = "symmetric"
	// SymmetricSeq: address-and-port-dependent mapping whose external
	// ports are allocated in sequence (+1 for every new mapping, whichever
	// LAN host or destination it is for; see SeqPortBase), address-and-
	// port-dependent filtering: what many carrier and enterprise NATs do.
	SymmetricSeq NAT = "symmetric-seq"
	// UDPBlocked: a corporate firewall (port-restricted NAT) that lets only
	// TCP to ports 80 and 443 out.
	UDPBlocked NAT = "udp-blocked"
	// UDPBlockedTCPOpen: a corporate firewall (port-restricted NAT,
	// masquerade) that drops all UDP but lets TCP out to any port, as many
	// corporate and hotel networks do. Inbound TCP gets in only as replies
	// (conntrack), and to the router itself as its Firewall says.
	UDPBlockedTCPOpen NAT = "udp-blocked-tcp-open"
	// ProxyOnly: a corporate network with no direct outbound at all; a
	// squid proxy on the router (LAN address, port 3128) accepts HTTP
	// CONNECT to port 443 (see Router.StartSquid).
	ProxyOnly NAT = "proxy-only"
)

// AllNATs lists every behaviour, in the brief's order.
var AllNATs = []NAT{FullCone, RestrictedCone, PortRestricted, Symmetric, UDPBlocked, UDPBlockedTCPOpen, ProxyOnly, SymmetricSeq}

// Firewall is what a router does with new packets from the WAN side to
// itself: the two variants every NAT behaviour exists in.
type Firewall string

const (
	// Home: new inbound packets to the router itself are dropped, as home
	// routers do. A dropped packet leaves no conntrack entry.
	Home Firewall = "home"
	// LinuxHost: the router accepts them (plain masquerade with no input
	// firewall), like a Docker, Podman or libvirt host, a cloud VM running
	// containers, a small Linux router. A punch packet that arrives before
	// the LAN host sent anything to its source becomes a conntrack entry
	// for a flow to the router itself, which blocks (and, by port clash,
	// moves) the LAN host's later mapping towards that source.
	LinuxHost Firewall = "linux-host"
)

// RouterConfig describes a router. Zero values are the common home router.
type RouterConfig struct {
	// Name is the router's short name (letters, digits; unique in the lab).
	Name string
	// NAT is the behaviour. Zero: PortRestricted.
	NAT NAT
	// Upstream is the segment the router's WAN side attaches to. Nil: the
	// internet. A router's LAN makes a double NAT (see Lab.AddDoubleNAT).
	Upstream *Network
	// WANAddr is the router's WAN IPv4 address. Zero: the next free address
	// on the upstream segment. It may lie outside the segment's prefix on
	// the internet (miniupnpd refuses reserved addresses, so a UPnP gateway
	// uses a public-looking one; the internet segment is on-link for all
	// addresses).
	WANAddr netip.Addr
	// LAN is the private prefix. Zero: 10.N.0.0/24 for the Nth router
	// (100.64.N.0/24 with Carrier).
	LAN netip.Prefix
	// Carrier makes the LAN a carrier-grade NAT range in 100.64.0.0/10.
	Carrier bool
	// Hairpin lets LAN hosts reach each other through the router's
	// external address and mapped ports. Zero: off, like many home routers.
	Hairpin bool
	// UDPTimeout is how long a UDP mapping lives without traffic, whether
	// or not it has seen replies (conntrack's udp_timeout and
	// udp_timeout_stream, and the cone NATs' port map entries). Zero: the
	// Linux defaults, 30s for a mapping that has seen no reply and 120s
	// once it has. Whole seconds.
	UDPTimeout time.Duration
	// IPv6 gives the LAN a routed IPv6 prefix behind a stateful firewall
	// (outbound and replies pass; unsolicited inbound is dropped). Only for
	// routers attached to the internet. Zero: IPv4 only.
	IPv6 bool
	// IPv6Only makes the router and its LAN IPv6 only (implies IPv6): no
	// IPv4 address on either side, no IPv4 route, nothing of IPv4
	// forwarded, and no NAT64 either, so its hosts reach IPv6 addresses
	// only. NAT then says only what the firewall lets out (every UDP kind
	// alike; UDPBlocked only TCP to 80 and 443, UDPBlockedTCPOpen all
	// TCP); not ProxyOnly, Carrier,
	// Hairpin, WANAddr or LAN.
	IPv6Only bool
	// Firewall is the router's input policy on its WAN side. Zero: Home.
	Firewall Firewall
}

// Router is a NAT gateway between a private LAN and its upstream segment.
type Router struct {
	Host // the router's own namespace; Addr is its WAN address
	cfg  RouterConfig
	lan  *Network
	wan6 netip.Addr
}

// NAT returns the router's behaviour.
func (r *Router) NAT() NAT { return r.cfg.NAT }

// Config returns the configuration the router was built with (defaults
// filled in).
func (r *Router) Config() RouterConfig { return r.cfg }

// LAN returns the router's private segment.
func (r *Router) LAN() *Network { return r.lan }

// WAN returns the router's external IPv4 address (invalid for IPv6Only).
func (r *Router) WAN() netip.Addr { return r.addr4 }

// LANAddr returns the router's IPv4 address on its LAN (the hosts'
// gateway; invalid for IPv6Only).
func (r *Router) LANAddr() netip.Addr { return r.lan.gw4 }

// LANAddr6 returns the router's IPv6 address on its LAN (invalid without
// IPv6).
func (r *Router) LANAddr6() netip.Addr { return r.lan.gw6 }

// AddHost adds a private host behind the router.
func (r *Router) AddHost(ctx context.Context, name string) (*Host, error) {
	return r.lan.AddHost(ctx, name)
}

// AddRouter builds a router of the given behaviour.
func (l *Lab) AddRouter(ctx context.Context, cfg RouterConfig) (*Router, error) {
	if cfg.Name == "" {
		return nil, fmt.Errorf("natlab: router needs a name")
	}
	if cfg.NAT == "" {
		cfg.NAT = PortRestricted
	}
	if cfg.Firewall == "" {
		cfg.Firewall = Home
	}
	up := cfg.Upstream
	if up == nil {
		up = l.inet
	}
	if cfg.IPv6Only {
		if cfg.NAT == ProxyOnly || cfg.Carrier || cfg.Hairpin || cfg.WANAddr.IsValid() || cfg.LAN.IsValid() {
			return nil, fmt.Errorf("natlab: router %s: IPv6Only with %s, Carrier, Hairpin, WANAddr or LAN is not modelled", cfg.Name, cfg.NAT)
		}
		cfg.IPv6 = true
	}
	if cfg.IPv6 && up != l.inet {
		return nil, fmt.Errorf("natlab: router %s: IPv6 only for routers on the internet segment", cfg.Name)
	}
	l.mu.Lock()
	l.nextNet++
	n := l.nextNet
	l.mu.Unlock()
	if !cfg.LAN.IsValid() && !cfg.IPv6Only {
		if cfg.Carrier {
			cfg.LAN = netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, byte(n), 0}), 24)
		} else {
			cfg.LAN = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(n), 0, 0}), 24)
		}
	}
	wan4, wan6, err := up.allocate()
	if err != nil {
		return nil, err
	}
	if cfg.WANAddr.IsValid() {
		wan4 = cfg.WANAddr
	}
	if cfg.IPv6Only {
		wan4 = netip.Addr{}
	}
	cfg.WANAddr = wan4
	if !cfg.IPv6 {
		wan6 = netip.Addr{}
	}
	r := &Router{cfg: cfg, wan6: wan6}
	r.Host = Host{lab: l, name: cfg.Name, ns: l.nsName(cfg.Name), net: up, addr4: wan4, addr6: wan6}
	if err := l.addNS(ctx, r.ns); err != nil {
		return nil, err
	}
	// WAN side. An address outside the segment's prefix gets a /32 plus
	// an on-link default route.
	if err := up.link(ctx, r.ns, "wan", wan4, wan6); err != nil {
		return nil, err
	}
	if wan4.IsValid() && !up.v4.Contains(wan4) {
		if err := run(ctx, "ip", "-n", r.ns, "addr", "del", netip.PrefixFrom(wan4, up.v4.Bits()).String(), "dev", "wan"); err != nil {
			return nil, err
		}
		if err := run(ctx, "ip", "-n", r.ns, "addr", "add", netip.PrefixFrom(wan4, 32).String(), "dev", "wan"); err != nil {
			return nil, err
		}
	}
	if err := up.defaultRoutes(ctx, r.ns, "wan", wan4.IsValid()); err != nil {
		return nil, err
	}
	// LAN side: a bridge in the router's namespace.
	lan := &Network{lab: l, name: cfg.Name, ns: r.ns, bridge: "lan", v4: cfg.LAN, next: 10}
	if cfg.LAN.IsValid() {
		lan.gw4 = cfg.LAN.Addr().Next()
	}
	if cfg.IPv6 {
		lan.v6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, byte(n)}), 64)
		lan.gw6 = lan.v6.Addr().Next()
	}
	r.lan = lan
	steps := [][]string{{"ip", "-n", r.ns, "link", "add", "lan", "type", "bridge"}}
	if lan.gw4.IsValid() {
		steps = append(steps, []string{"ip", "-n", r.ns, "addr", "add", netip.PrefixFrom(lan.gw4, cfg.LAN.Bits()).String(), "dev", "lan"})
	}
	steps = append(steps, []string{"ip", "-n", r.ns, "link", "set", "lan", "up"})
	if cfg.IPv6 {
		steps = append(steps, []string{"ip", "-n", r.ns, "-6", "addr", "add", netip.PrefixFrom(lan.gw6, 64).String(), "dev", "lan", "nodad"})
	}
	for _, s := range steps {
		if err := run(ctx, s...); err != nil {
			return nil, err
		}
	}
	kv := []string{"net.ipv6.conf.all.forwarding", "1"}
	if !cfg.IPv6Only {
		kv = append(kv, "net.ipv4.ip_forward", "1")
	}
	if cfg.UDPTimeout > 0 {
		secs := strconv.Itoa(max(1, int(cfg.UDPTimeout/time.Second)))
		kv = append(kv, "net.netfilter.nf_conntrack_udp_timeout", secs, "net.netfilter.nf_conntrack_udp_timeout_stream", secs)
	}
	if err := sysctl(ctx, r.ns, kv...); err != nil {
		return nil, err
	}
	if err := runInput(ctx, r.ruleset(), "ip", "netns", "exec", r.ns, "nft", "-f", "-"); err != nil {
		return nil, err
	}
	if cfg.IPv6 {
		if err := up.addRoute6(ctx, lan.v6, wan6); err != nil {
			return nil, err
		}
	}
	l.mu.Lock()
	l.routers = append(l.routers, r)
	l.mu.Unlock()
	l.log.Debug("router added", "router", cfg.Name, "nat", cfg.NAT, "wan", wan4, "lan", cfg.LAN)
	return r, nil
}

// AddDoubleNAT builds a carrier-grade NAT (behaviour carrier, LAN in
// 100.64.0.0/10) and a home router of behaviour home behind it. It returns
// the home router; hosts go behind it.
func (l *Lab) AddDoubleNAT(ctx context.Context, name string, home, carrier NAT) (*Router, *Router, error) {
	cg, err := l.AddRouter(ctx, RouterConfig{Name: name + "cg", NAT: carrier, Carrier: true})
	if err != nil {
		return nil, nil, err
	}
	h, err := l.AddRouter(ctx, RouterConfig{Name: name, NAT: home, Upstream: cg.LAN()})
	if err != nil {
		return nil, nil, err
	}
	return h, cg, nil
}

// SeqPortBase and SeqPortCount are the external ports of a SymmetricSeq
// router: the Nth new UDP mapping (and, with a counter of its own, the Nth
// new TCP connection) since the router was built gets port
// SeqPortBase + N mod SeqPortCount.
const (
	SeqPortBase  = 20000
	SeqPortCount = 4096
)

// ruleset renders the router's nftables configuration.
//
// Mapping: masquerade keeps the LAN source port when it is free, which is
// endpoint-independent mapping; "masquerade random" picks a new random port
// for every new (source, destination) pair, which is address-and-port-
// dependent mapping; SymmetricSeq's "snat to WAN : numgen inc" gives every
// new flow the next port of a counter, address-and-port-dependent mapping
// allocated in sequence.
//
// Filtering: conntrack lets in only replies from the exact address and
// port a LAN host sent to (address-and-port-dependent). The cone types add
// a port map filled from the packet path: every UDP packet leaving the WAN
// records external port -> LAN host:port (after NAT, so the port is the
// mapped one). Full cone forwards any inbound packet to a recorded port;
// restricted cone only when the sender's address is in the set of
// (remote address, external port) pairs the LAN host has sent to.
func (r *Router) ruleset() string {
	var b strings.Builder
	if !r.cfg.IPv6Only {
		r.ruleset4(&b)
	}
	if r.cfg.IPv6 {
		r.ruleset6(&b)
	}
	return b.String()
}

// ruleset4 renders the IPv4 table: the NAT behaviour and both firewalls.
func (r *Router) ruleset4(b *strings.Builder) {
	c := r.cfg
	to := "120"
	if c.UDPTimeout > 0 {
		to = strconv.Itoa(max(1, int(c.UDPTimeout/time.Second)))
	}
	wan := r.addr4.String()
	lanNet := c.LAN.String()
	fmt.Fprintf(b, "table ip lab {\n")
	fmt.Fprintf(b, "  map portmap { type inet_service : ipv4_addr . inet_service; flags dynamic,timeout; timeout %ss; }\n", to)
	fmt.Fprintf(b, "  set contacted { type ipv4_addr . inet_service; flags dynamic,timeout; timeout %ss; }\n", to)
	if c.NAT == SymmetricSeq {
		b.WriteString("  map seqport { typeof numgen inc mod 1 : udp dport; elements = { ")
		for i := range SeqPortCount {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(b, "%d : %d", i, SeqPortBase+i)
		}
		b.WriteString(" }; }\n")
	}
	b.WriteString("  chain prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n")
	switch c.NAT {
	case FullCone:
		fmt.Fprintf(b, "    iifname \"wan\" ip daddr %s udp dport @portmap dnat ip to udp dport map @portmap\n", wan)
	case RestrictedCone:
		fmt.Fprintf(b, "    iifname \"wan\" ip daddr %s ip saddr . udp dport @contacted dnat ip to udp dport map @portmap\n", wan)
	}
	if c.Hairpin {
		fmt.Fprintf(b, "    iifname \"lan\" ip daddr %s udp dport @portmap dnat ip to udp dport map @portmap\n", wan)
	}
	b.WriteString("  }\n")
	b.WriteString("  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n")
	if c.Hairpin {
		// (no input interface at postrouting: match the addresses)
		fmt.Fprintf(b, "    oifname \"lan\" ip saddr %s ip daddr %s ct status dnat snat ip to %s\n", lanNet, lanNet, wan)
	}
	switch c.NAT {
	case Symmetric:
		fmt.Fprintf(b, "    oifname \"wan\" ip saddr %s masquerade random\n", lanNet)
	case SymmetricSeq:
		// The nat chain sees only a flow's first packet, so each new flow
		// takes the counter's next value: a port of its own per
		// destination, in sequence. (The counter goes through the seqport
		// map because numgen's value is in host byte order and a port in
		// network order.) A port already taken by a flow with the same
		// remote endpoint (linux-host: a packet from it to the router
		// itself) makes conntrack drop that first packet; the next one
		// takes the next port, so the NAT skips taken ports at the cost
		// of one packet each.
		for _, proto := range []string{"udp", "tcp"} {
			fmt.Fprintf(b, "    oifname \"wan\" ip saddr %s meta l4proto %s snat ip to %s : numgen inc mod %d map @seqport\n",
				lanNet, proto, wan, SeqPortCount)
		}
		fmt.Fprintf(b, "    oifname \"wan\" ip saddr %s masquerade random\n", lanNet)
	case ProxyOnly:
		// nothing from the LAN goes out; the router's own traffic (squid)
		// leaves with its WAN address as it is.
	default:
		fmt.Fprintf(b, "    oifname \"wan\" ip saddr %s masquerade\n", lanNet)
	}
	b.WriteString("  }\n")
	b.WriteString("  chain record {\n    type filter hook postrouting priority srcnat + 1; policy accept;\n")
	fmt.Fprintf(b, "    oifname \"wan\" ct original ip saddr %s meta l4proto udp update @portmap { udp sport : ct original ip saddr . ct original proto-src }\n", lanNet)
	fmt.Fprintf(b, "    oifname \"wan\" ct original ip saddr %s meta l4proto udp update @contacted { ip daddr . udp sport }\n", lanNet)
	b.WriteString("  }\n")
	// The router's own firewall. Home: as on real home routers, nothing
	// new comes in on the WAN side to the router itself. This matters for
	// hole punching: a dropped packet leaves no conntrack entry, whereas
	// one accepted into an empty port leaves an un-NATed entry that
	// blocks (and, by port clash, moves) the LAN host's later mapping.
	// LinuxHost: no input firewall at all, so that is what happens.
	b.WriteString("  chain input {\n    type filter hook input priority filter; policy accept;\n")
	if c.Firewall != LinuxHost {
		b.WriteString("    iifname \"wan\" ct state established,related accept\n")
		b.WriteString("    iifname \"wan\" meta l4proto icmp accept\n")
		b.WriteString("    iifname \"wan\" drop\n")
	}
	b.WriteString("  }\n")
	b.WriteString("  chain forward {\n    type filter hook forward priority filter; policy drop;\n")
	b.WriteString("    ct state established,related accept\n")
	switch c.NAT {
	case UDPBlocked:
		b.WriteString("    iifname \"lan\" oifname \"wan\" tcp dport { 80, 443 } accept\n")
	case UDPBlockedTCPOpen:
		b.WriteString("    iifname \"lan\" oifname \"wan\" meta l4proto tcp accept\n")
	case ProxyOnly:
		// no forwarding from the LAN at all
	default:
		b.WriteString("    iifname \"lan\" accept\n")
	}
	b.WriteString("    iifname \"wan\" ct status dnat accept\n")
	if c.Hairpin {
		b.WriteString("    iifname \"lan\" oifname \"lan\" ct status dnat accept\n")
	}
	b.WriteString("  }\n}\n")
}

// ruleset6 renders the IPv6 table: routed, no NAT; a stateful firewall for
// the LAN (the corporate types keep their outbound policy), and the same
// input policy on the router itself as for IPv4, except that ICMPv6 passes
// (neighbour discovery needs it).
func (r *Router) ruleset6(b *strings.Builder) {
	c := r.cfg
	b.WriteString("table ip6 lab6 {\n")
	b.WriteString("  chain input {\n    type filter hook input priority filter; policy accept;\n")
	if c.Firewall != LinuxHost {
		b.WriteString("    iifname \"wan\" ct state established,related accept\n")
		b.WriteString("    iifname \"wan\" meta l4proto ipv6-icmp accept\n")
		b.WriteString("    iifname \"wan\" drop\n")
	}
	b.WriteString("  }\n")
	b.WriteString("  chain forward {\n    type filter hook forward priority filter; policy drop;\n")
	b.WriteString("    ct state established,related accept\n")
	b.WriteString("    meta l4proto ipv6-icmp icmpv6 type { packet-too-big, time-exceeded, destination-unreachable } accept\n")
	switch c.NAT {
	case UDPBlocked:
		b.WriteString("    iifname \"lan\" oifname \"wan\" tcp dport { 80, 443 } accept\n")
	case UDPBlockedTCPOpen:
		b.WriteString("    iifname \"lan\" oifname \"wan\" meta l4proto tcp accept\n")
	case ProxyOnly:
	default:
		b.WriteString("    iifname \"lan\" accept\n")
	}
	b.WriteString("  }\n}\n")
}
