package natlab

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
)

// Kind names a place a peer can sit: on the open internet or behind one
// of the router behaviours. It is what `reach lab` and the matrix take.
type Kind string

// The kinds of the brief's table.
const (
	Open       Kind = "open"
	KindDouble Kind = "double-nat"
)

// Kinds lists every kind, in the brief's order.
func Kinds() []Kind {
	k := []Kind{Open}
	for _, n := range []NAT{FullCone, RestrictedCone, PortRestricted, Symmetric} {
		k = append(k, Kind(n))
	}
	return append(k, KindDouble, Kind(UDPBlocked), Kind(UDPBlockedTCPOpen), Kind(ProxyOnly))
}

// MoreKinds lists the kinds built on request that are not in the brief's
// table, so not in Kinds() (nor, yet, the matrix): ParseKind, `reach lab
// up` and `reach lab classify` take them.
func MoreKinds() []Kind { return []Kind{Kind(SymmetricSeq)} }

// ParseKind checks a kind name (Kinds and MoreKinds).
func ParseKind(s string) (Kind, error) {
	for _, k := range append(Kinds(), MoreKinds()...) {
		if string(k) == s {
			return k, nil
		}
	}
	names := make([]string, 0, 8)
	for _, k := range append(Kinds(), MoreKinds()...) {
		names = append(names, string(k))
	}
	return "", fmt.Errorf("natlab: unknown kind %q (one of %s)", s, strings.Join(names, ", "))
}

// Site is one peer's place in a topology: its host and, unless it is open,
// the router in front of it.
type Site struct {
	Kind   Kind
	Host   *Host
	Router *Router // nil for Open
}

// AddSite builds a peer host of the given kind named name (its router, if
// any, is name+"r"; a double NAT's carrier is name+"rcg").
func (l *Lab) AddSite(ctx context.Context, name string, k Kind) (*Site, error) {
	s := &Site{Kind: k}
	var err error
	switch k {
	case Open:
		s.Host, err = l.AddPublicHost(ctx, name)
		return s, err
	case KindDouble:
		s.Router, _, err = l.AddDoubleNAT(ctx, name+"r", PortRestricted, PortRestricted)
	default:
		s.Router, err = l.AddRouter(ctx, RouterConfig{Name: name + "r", NAT: NAT(k)})
	}
	if err != nil {
		return nil, err
	}
	s.Host, err = s.Router.AddHost(ctx, name)
	return s, err
}

// Describe returns a human-readable listing of the lab's hosts and routers.
func (l *Lab) Describe() string {
	l.mu.Lock()
	hosts := append([]*Host(nil), l.hosts...)
	routers := append([]*Router(nil), l.routers...)
	l.mu.Unlock()
	var b strings.Builder
	for _, r := range routers {
		wan, lan := orNone(r.addr4), r.cfg.LAN.String()
		if r.cfg.IPv6Only {
			wan, lan = r.wan6.String()+" (IPv6 only)", r.lan.v6.String()
		}
		fmt.Fprintf(&b, "router %-10s %-16s wan %-15s lan %-15s ns %s\n", r.name, r.cfg.NAT, wan, lan, r.ns)
	}
	for _, h := range hosts {
		v6 := ""
		if h.addr6.IsValid() {
			v6 = " " + h.addr6.String()
		}
		fmt.Fprintf(&b, "host   %-10s on %-13s %s%s  ns %s\n", h.name, h.net.name, orNone(h.addr4), v6, h.ns)
	}
	return b.String()
}

// orNone prints an address, or "-" for none (an IPv6-only host's IPv4).
func orNone(a netip.Addr) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}
