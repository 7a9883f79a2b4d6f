package main

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// ErrBadPublicAddr is a --public-addr that is not IP or IP:PORT.
var ErrBadPublicAddr = errors.New("--public-addr: want IP or IP:PORT (IPv6 in brackets with a port)")

// parsePublicAddr parses a --public-addr value: "IP", "[IPv6]",
// "IP:PORT" or "[IPv6]:PORT". A missing port is zero (the bound port).
// The unspecified address and port 0 are refused: neither can be
// advertised.
func parsePublicAddr(s string) (netip.AddrPort, error) {
	var ap netip.AddrPort
	if ip, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil && ip.Zone() == "" {
		ap = netip.AddrPortFrom(ip, 0)
	} else {
		ap, err = netip.ParseAddrPort(s)
		if err != nil || ap.Addr().Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("%w: %q", ErrBadPublicAddr, s)
		}
		if ap.Port() == 0 {
			return netip.AddrPort{}, fmt.Errorf("%w: %q: port 0", ErrBadPublicAddr, s)
		}
	}
	if ap.Addr().IsUnspecified() {
		return netip.AddrPort{}, fmt.Errorf("%w: %q: the unspecified address", ErrBadPublicAddr, s)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// parsePublicAddrs parses every --public-addr.
func parsePublicAddrs(vals []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, v := range vals {
		ap, err := parsePublicAddr(v)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, nil
}
