package main

// netcheck's TCP and IPv6 checks. TCP: for networks that block UDP, a
// node signals and relays over TLS on TCP (port 443 when the server has
// it) or a WebSocket inside HTTPS; netcheck does both handshakes with each
// reach server, pinning its key, and closes. IPv6: whether this host has a
// global IPv6 address, and whether STUN over IPv6 to a server answers
// (a peer with IPv6 is usually reachable directly, without NAT).

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/rendezvous"
)

// errNoAnswer: no server answered, over UDP or TCP (netcheck exits 1
// after its report).
var errNoAnswer = errors.New("no server answered, over UDP or TCP (a firewall blocks both? a proxy that needs setting?)")

// netcheckTCP is one TCP check: TLS with the server's pinned key and
// reach's signalling ALPN, and the same inside a WebSocket over HTTPS.
type netcheckTCP struct {
	Server string `json:"server"` // the connect string
	Addr   string `json:"addr"`   // host:port dialled
	// Port443: the check is of TCP port 443, which firewalls that block
	// everything else usually let through.
	Port443 bool `json:"port_443"`
	// TLS: a TLS handshake proved the server's key.
	TLS   bool    `json:"tls"`
	RTTms float64 `json:"rtt_ms,omitempty"` // TCP connect and TLS handshake
	Error string  `json:"error,omitempty"`
	// WebSocket: wss://addr/rdv upgraded and the TLS inside proved the
	// server's key (what works through proxies that pass only HTTP).
	WebSocket      bool   `json:"websocket"`
	WebSocketError string `json:"websocket_error,omitempty"`
}

// netcheckIPv6 is the IPv6 check.
type netcheckIPv6 struct {
	// Global lists this host's global unicast IPv6 addresses (not
	// link-local, not unique-local fc00::/7).
	Global []string `json:"global_addresses"`
	// Server is the IPv6 address STUN was sent to: the first reach
	// server with one (an IPv6 literal, or an AAAA record); empty when
	// none has.
	Server   string  `json:"server,omitempty"`
	UDP      bool    `json:"udp"`
	RTTms    float64 `json:"rtt_ms,omitempty"`
	Observed string  `json:"observed,omitempty"`
	Error    string  `json:"error,omitempty"`
}

// globalIPv6 returns the global unicast IPv6 addresses among addrs
// (interface addresses, CIDR or bare).
func globalIPv6(addrs []string) []string {
	out := []string{}
	for _, a := range addrs {
		ip, err := netip.ParseAddr(a)
		if err != nil {
			p, perr := netip.ParsePrefix(a)
			if perr != nil {
				continue
			}
			ip = p.Addr()
		}
		if ip.Is6() && !ip.Is4In6() && ip.IsGlobalUnicast() && !ip.IsPrivate() {
			out = append(out, ip.String())
		}
	}
	return out
}

// tcpChecks are the TCP checks for reach servers: the connect string's
// TCP port and, when that is not 443, port 443 of the same host too (a
// server may listen there without naming it).
func tcpChecks(servers []string, sas []rendezvous.ServerAddr) []netcheckTCP {
	var out []netcheckTCP
	for i, sa := range sas {
		main := sa.TCPHostPort()
		out = append(out, netcheckTCP{Server: servers[i], Addr: main, Port443: strings.HasSuffix(main, ":443")})
		if !strings.HasSuffix(main, ":443") {
			out = append(out, netcheckTCP{Server: servers[i], Addr: net.JoinHostPort(sa.Host, "443"), Port443: true})
		}
	}
	return out
}

// probeTCP runs one TCP check, each handshake bounded by timeout.
func probeTCP(ctx context.Context, c *netcheckTCP, key *identity.Key, timeout time.Duration) {
	sa, err := rendezvous.ParseServerAddr(c.Server)
	if err != nil {
		c.Error = err.Error()
		return
	}
	_, port, _ := net.SplitHostPort(c.Addr)
	p, _ := strconv.Atoi(port)
	sa.TCPPort = uint16(p)

	tctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	var d net.Dialer
	raw, err := d.DialContext(tctx, "tcp", c.Addr)
	if err != nil {
		// No TCP connection: a WebSocket would not get one either.
		cancel()
		c.Error = message(unwrapOp(err))
		c.WebSocketError = c.Error
		return
	}
	err = pinnedHandshake(tctx, raw, key, sa.ID)
	raw.Close()
	cancel()
	if err != nil {
		c.Error = message(unwrapOp(err))
	} else {
		c.TLS, c.RTTms = true, float64(time.Since(start).Microseconds())/1000
	}

	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ws, err := rendezvous.WebSocketDialer{Key: key}.Dial(wctx, sa, rendezvous.PathSignal)
	if err == nil {
		err = pinnedHandshake(wctx, ws, key, sa.ID)
		ws.Close()
	}
	if err != nil {
		c.WebSocketError = message(unwrapOp(err))
	} else {
		c.WebSocket = true
	}
}

// pinnedHandshake does reach's TLS handshake on raw as a signalling
// client would: the server must prove want's key and agree to the ALPN.
func pinnedHandshake(ctx context.Context, raw net.Conn, key *identity.Key, want identity.PeerID) error {
	cfg, pin, err := identity.ClientTLSConfig(key, want, rendezvous.ALPN)
	if err != nil {
		return err
	}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		if perr := pin.Err(); perr != nil {
			return perr
		}
		return err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != rendezvous.ALPN {
		return fmt.Errorf("the server did not agree to %s (got %q): not a reach server?", rendezvous.ALPN, p)
	}
	return nil
}

// probeIPv6 fills in r.IPv6: global addresses from r.Local, and STUN from
// s to the first reach server with an IPv6 address.
func probeIPv6(ctx context.Context, s *sock.Socket, r *netcheckReport, sas []rendezvous.ServerAddr, timeout time.Duration) {
	r.IPv6.Global = globalIPv6(r.Local)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var to netip.AddrPort
	for _, sa := range sas {
		ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip6", sa.Host)
		if err != nil {
			continue
		}
		for _, ip := range ips {
			if ip.Is6() && !ip.Is4In6() {
				to = netip.AddrPortFrom(ip, sa.Port)
				break
			}
		}
		if to.IsValid() {
			break
		}
	}
	if !to.IsValid() {
		return
	}
	r.IPv6.Server = to.String()
	best := time.Duration(-1)
	for range 3 {
		start := time.Now()
		got, err := s.STUNBinding(ctx, to)
		if err != nil {
			if best < 0 {
				r.IPv6.Error = message(err)
			}
			break
		}
		if rtt := time.Since(start); best < 0 || rtt < best {
			best = rtt
		}
		r.IPv6.UDP, r.IPv6.Observed, r.IPv6.Error = true, got.Mapped.String(), ""
	}
	if best >= 0 {
		r.IPv6.RTTms = float64(best.Microseconds()) / 1000
	}
}

// ipv6Direct: STUN over IPv6 saw one of this host's own addresses (no
// NAT on IPv6: peers with IPv6 reach it directly, firewall permitting).
func ipv6Direct(r *netcheckReport) bool {
	ap, err := netip.ParseAddrPort(r.IPv6.Observed)
	if err != nil {
		return false
	}
	for _, l := range r.Local {
		if p, err := netip.ParsePrefix(l); err == nil && p.Addr() == ap.Addr() {
			return true
		}
	}
	return false
}

// printTCP prints the TCP checks, in the list of servers.
func printTCP(w io.Writer, r *netcheckReport) {
	for _, c := range r.TCP {
		if !c.TLS && !c.WebSocket {
			hint := ""
			if c.Port443 {
				hint = " (networks that let only 443 through cannot reach this server)"
			}
			fmt.Fprintf(w, "  %-9s %-27s FAILED   %s%s\n", "tcp", c.Addr, c.Error, hint)
			continue
		}
		tlsText := "tls ok"
		if c.TLS {
			tlsText += fmt.Sprintf(" rtt %6.2fms", c.RTTms)
		} else {
			tlsText = "tls FAILED (" + c.Error + ")"
		}
		wsText := "websocket ok"
		if !c.WebSocket {
			wsText = "websocket FAILED (" + c.WebSocketError + ")"
		}
		fmt.Fprintf(w, "  %-9s %-27s %s  %s\n", "tcp", c.Addr, tlsText, wsText)
	}
}

// printIPv6 prints the IPv6 line.
func printIPv6(w io.Writer, r *netcheckReport) {
	v6 := r.IPv6
	addrs := "no global IPv6 address"
	if len(v6.Global) > 0 {
		addrs = "global " + strings.Join(v6.Global, ", ")
	}
	var stun string
	switch {
	case v6.Server == "":
		stun = "no server has an IPv6 address: STUN over IPv6 not tried"
	case v6.UDP:
		stun = fmt.Sprintf("STUN over IPv6 to %s ok, rtt %.2fms, sees %s", v6.Server, v6.RTTms, v6.Observed)
		if ipv6Direct(r) {
			stun += " (its own address: no NAT)"
		}
	default:
		stun = fmt.Sprintf("STUN over IPv6 to %s FAILED: %s", v6.Server, v6.Error)
	}
	fmt.Fprintf(w, "ipv6:             %s; %s\n", addrs, stun)
}

// tcpWorks is the first TCP check that passed (TLS or WebSocket), or nil.
func tcpWorks(r *netcheckReport) *netcheckTCP {
	for i, c := range r.TCP {
		if c.TLS || c.WebSocket {
			return &r.TCP[i]
		}
	}
	return nil
}
