package upnp

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
)

// nonPublic lists IPv4 ranges a mapping on which no peer on the internet
// can reach: private (RFC 1918), shared address space for carrier-grade
// NAT (RFC 6598), loopback, link-local, "this network", benchmarking and
// multicast/reserved. The documentation ranges are left out on purpose:
// the NAT lab uses 203.0.113.0/24 as its internet.
var nonPublic = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.0.0.0/24"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("198.18.0.0/15"),
	netip.MustParsePrefix("224.0.0.0/3"),
}

// IsPublic reports whether a is an address peers on the internet can
// send to: not private, not carrier-grade NAT space (100.64.0.0/10), not
// loopback, link-local, unspecified or multicast.
func IsPublic(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsMulticast() || a.IsPrivate() {
		return false
	}
	for _, p := range nonPublic {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

// localPrefixes returns the node's IPv4 interface prefixes (no loopback).
func (m *Mapper) localPrefixes() []netip.Prefix {
	addrs, err := m.cfg.InterfaceAddrs()
	if err != nil {
		m.log.Debug("upnp: listing interface addresses", "err", err)
		return nil
	}
	var out []netip.Prefix
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		if ip := p.Addr().Unmap(); ip.Is4() && !ip.IsLoopback() && !ip.IsLinkLocalUnicast() {
			out = append(out, netip.PrefixFrom(ip, p.Bits()))
		}
	}
	return out
}

// localFor returns the local address on gw's network: the one the
// gateway sees requests come from, and forwards the mapping to.
func (m *Mapper) localFor(gw netip.Addr) (netip.Addr, error) {
	var fallback netip.Addr
	for _, p := range m.localPrefixes() {
		if p.Masked().Contains(gw) {
			return p.Addr(), nil
		}
		if !fallback.IsValid() && p.Addr().IsPrivate() {
			fallback = p.Addr()
		}
	}
	if fallback.IsValid() {
		return fallback, nil
	}
	return netip.Addr{}, fmt.Errorf("upnp: no local IPv4 address for gateway %s", gw)
}

// gateways returns where to send NAT-PMP and PCP requests.
func (m *Mapper) gateways() []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		if a.IsValid() && a.Is4() && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	if m.cfg.Gateways != nil {
		gws, err := m.cfg.Gateways()
		if err != nil {
			m.log.Debug("upnp: listing gateways", "err", err)
		}
		for _, g := range gws {
			add(g.Unmap())
		}
		return out
	}
	prefixes := m.localPrefixes()
	for _, g := range routeGateways() {
		// Only a gateway on one of our networks can be ours.
		for _, p := range prefixes {
			if p.Masked().Contains(g) {
				add(g)
			}
		}
	}
	for _, p := range prefixes {
		// Home routers sit on the first address of their LAN.
		if p.Addr().IsPrivate() && p.Bits() < 31 {
			add(p.Masked().Addr().Next())
		}
	}
	return out
}

// routeGateways reads the gateways of IPv4 default routes from Linux's
// /proc/net/route (none elsewhere, or if it cannot be read).
func routeGateways() []netip.Addr {
	f, err := os.Open("/proc/net/route")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []netip.Addr
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Iface Destination Gateway Flags ... (hex, little endian)
		fs := strings.Fields(sc.Text())
		if len(fs) < 3 || fs[1] != "00000000" {
			continue
		}
		b, err := hex.DecodeString(fs[2])
		if err != nil || len(b) != 4 {
			continue
		}
		var ip [4]byte
		binary.LittleEndian.PutUint32(ip[:], binary.BigEndian.Uint32(b))
		if a := netip.AddrFrom4(ip); !a.IsUnspecified() {
			out = append(out, a)
		}
	}
	return out
}

// listenUDP opens a UDP socket on local (port 0) through the hook.
func (m *Mapper) listenUDP(local netip.Addr) (net.PacketConn, error) {
	return m.cfg.ListenPacket("udp4", netip.AddrPortFrom(local, 0).String())
}
