package main

// reach netcheck: what a user runs first when something does not connect.
// One UDP socket, like a node's: STUN to every server (and extra STUN
// endpoints) from it, so the reflexive addresses show whether the NAT's
// mapping depends on the destination; the port mapper on its port, to
// show which protocol the gateway speaks and what it grants (the mapping
// is deleted before netcheck exits).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/upnp"
)

// netcheckReport is netcheck's result; --json prints it as is.
type netcheckReport struct {
	Local     []string           `json:"local_addresses"`
	Socket    string             `json:"socket"`
	Endpoints []netcheckEndpoint `json:"endpoints"`
	// Public lists the distinct reflexive addresses the endpoints saw.
	Public []string `json:"public"`
	// MappingVaries: the NAT gave the socket a different public address
	// or port per destination (address-and-port-dependent mapping, a
	// symmetric NAT). Null when fewer than two endpoints answered.
	MappingVaries *bool `json:"mapping_varies_by_destination"`
	// Allocation, when the mapping varies: how the NAT picks a new public
	// port ("sequential +N", "random"), from the ports fresh sockets got
	// one after the other.
	Allocation string `json:"port_allocation,omitempty"`
	// NAT sums the two up: "endpoint-independent", "symmetric,
	// sequential +N", "symmetric, random", "symmetric" (allocation
	// unknown); empty when the mapping is unknown.
	NAT         string          `json:"nat,omitempty"`
	PortMapping netcheckMapping `json:"port_mapping"`
	// TCP: TLS and WebSocket to each reach server's TCP port, and to its
	// port 443 (netcheck_more.go).
	TCP []netcheckTCP `json:"tcp"`
	// IPv6: global addresses, STUN over IPv6.
	IPv6 netcheckIPv6 `json:"ipv6"`
	// Verdict says what will connect from here.
	Verdict string `json:"verdict"`
}

type netcheckEndpoint struct {
	Name     string         `json:"name"` // as given
	Kind     string         `json:"kind"` // "reach" or "stun"
	Addr     string         `json:"addr"` // resolved UDP address
	UDP      bool           `json:"udp"`  // a STUN answer came back
	RTTms    float64        `json:"rtt_ms,omitempty"`
	Observed string         `json:"observed,omitempty"` // the socket's address as it saw it
	Error    string         `json:"error,omitempty"`
	other    netip.AddrPort // its OTHER-ADDRESS (a reach server's alternate STUN port)
}

type netcheckMapping struct {
	Protocol        string `json:"protocol,omitempty"`
	Gateway         string `json:"gateway,omitempty"`
	GatewayExternal string `json:"gateway_external,omitempty"`
	External        string `json:"external,omitempty"`
	Internal        string `json:"internal,omitempty"`
	LeaseSeconds    int    `json:"lease_seconds,omitempty"`
	Permanent       bool   `json:"permanent,omitempty"`
	Error           string `json:"error,omitempty"`
	Disabled        bool   `json:"disabled,omitempty"`
}

const netcheckHelp = `usage: reach netcheck [--server CS]... [--stun HOST:PORT]... [flags]

Diagnoses this network the way a node sees it, from one UDP socket: its
local addresses, the public address each server (and each extra STUN
server) sees, whether the NAT's mapping varies by destination (a
symmetric NAT: hole punching is hard), and whether the gateway grants a
port mapping (UPnP IGD, NAT-PMP, PCP; the mapping is deleted before it
exits). For each reach server it also checks TCP, as a node behind a
firewall that blocks UDP would use it: a TLS handshake proving the
server's key on its TCP port and on port 443, and the same inside a
WebSocket (HTTPS); and IPv6: whether this host has a global IPv6 address
and whether STUN over IPv6 to the server answers. It exits 1 when no
server answered at all (over UDP or TCP). It prints a report on stdout, or the report as one JSON object
with --json. See docs/portmapping.md.
`

func runNetcheck(args []string) error {
	fs := newFlagSet("netcheck", netcheckHelp)
	var servers, stuns multiFlag
	fs.Var(&servers, "server", "rendezvous connect string (repeatable; default $REACH_SERVER)")
	fs.Var(&stuns, "stun", "extra STUN server host:port, e.g. a coturn (repeatable)")
	jsonOut := fs.Bool("json", false, "print the report as JSON")
	timeout := fs.Duration("timeout", 4*time.Second, "how long to wait for each server and the gateway")
	noMap := fs.Bool("no-portmap", false, "do not ask the gateway for a port mapping")
	verbose := fs.Bool("v", false, "debug logs on stderr")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usagef("netcheck", "netcheck takes no arguments, got %q", fs.Arg(0))
	}
	if len(servers) == 0 {
		if env := os.Getenv("REACH_SERVER"); env != "" {
			servers = strings.Fields(strings.ReplaceAll(env, ",", " "))
		}
	}
	if len(servers) == 0 && len(stuns) == 0 {
		return errors.New("no server: pass --server CS (or --stun HOST:PORT), or set REACH_SERVER")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if *verbose {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout+5*time.Second)
	defer cancel()
	rep, err := netcheck(ctx, servers, stuns, *timeout, !*noMap, log)
	if rep == nil {
		return err
	}
	if *jsonOut {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		if jerr := enc.Encode(rep); jerr != nil {
			return jerr
		}
		return err
	}
	printNetcheck(os.Stdout, rep)
	return err // errNoUDPAnswer: exit 1 after the report
}

func netcheck(ctx context.Context, servers, stuns []string, timeout time.Duration, portmap bool, log *slog.Logger) (*netcheckReport, error) {
	rep := &netcheckReport{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !p.Addr().IsLoopback() {
				rep.Local = append(rep.Local, a.String())
			}
		}
	}
	s, err := sock.Listen(sock.Config{Logger: log})
	if err != nil {
		return nil, err
	}
	defer s.Close()
	rep.Socket = s.LocalAddr().String()

	// The gateway and the servers are asked at the same time.
	var mapper *upnp.Mapper
	if portmap {
		mapper, err = upnp.Start(upnp.Config{Port: s.Port(), Logger: log, DiscoverTimeout: min(timeout, 2*time.Second)})
		if err != nil {
			return nil, err
		}
		defer mapper.Close() // deletes the mapping
	} else {
		rep.PortMapping.Disabled = true
	}
	var sas []rendezvous.ServerAddr
	for _, cs := range servers {
		ep := netcheckEndpoint{Name: cs, Kind: "reach"}
		sa, err := rendezvous.ParseServerAddr(cs)
		if err != nil {
			return nil, err
		}
		sas = append(sas, sa)
		ep.Addr = net.JoinHostPort(sa.Host, strconv.Itoa(int(sa.Port)))
		rep.Endpoints = append(rep.Endpoints, ep)
	}
	for _, st := range stuns {
		if _, _, err := net.SplitHostPort(st); err != nil {
			st = net.JoinHostPort(st, "3478")
		}
		rep.Endpoints = append(rep.Endpoints, netcheckEndpoint{Name: st, Kind: "stun", Addr: st})
	}
	rep.TCP = tcpChecks(servers, sas)
	key, err := identity.GenerateKey() // the TLS checks' client key, used once
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for i := range rep.Endpoints {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probeEndpoint(ctx, s, &rep.Endpoints[i], timeout)
		}()
	}
	for i := range rep.TCP {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probeTCP(ctx, &rep.TCP[i], key, timeout)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		probeIPv6(ctx, s, rep, sas, timeout)
	}()
	wg.Wait()
	// A reach server names a second STUN port of its own: asking it too
	// tells whether the mapping varies with one server.
	first := len(rep.Endpoints)
	for i := range first {
		ep := rep.Endpoints[i]
		if ep.Kind != "reach" || !ep.other.IsValid() {
			continue
		}
		to, err := netip.ParseAddrPort(ep.Addr)
		if err != nil {
			continue
		}
		alt := netip.AddrPortFrom(to.Addr(), ep.other.Port())
		rep.Endpoints = append(rep.Endpoints, netcheckEndpoint{Name: ep.Name + " (alternate port)", Kind: "reach-alt", Addr: alt.String()})
	}
	for i := first; i < len(rep.Endpoints); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			probeEndpoint(ctx, s, &rep.Endpoints[i], timeout)
		}()
	}
	wg.Wait()

	// The mapping is compared over IPv4 only: an IPv6 answer (a server
	// given by its IPv6 address) is another address, not another mapping.
	var observed, observed4 []netip.AddrPort
	answered, answered4 := 0, 0
	for _, ep := range rep.Endpoints {
		ap, err := netip.ParseAddrPort(ep.Observed)
		if err != nil {
			continue
		}
		answered++
		if !slices.Contains(observed, ap) {
			observed = append(observed, ap)
		}
		if ap.Addr().Unmap().Is4() {
			answered4++
			if !slices.Contains(observed4, ap) {
				observed4 = append(observed4, ap)
			}
		}
	}
	for _, ap := range observed {
		rep.Public = append(rep.Public, ap.String())
	}
	if answered4 >= 2 {
		varies := len(observed4) > 1
		rep.MappingVaries = &varies
		if varies {
			rep.Allocation = allocation(ctx, rep.Endpoints, timeout, log)
		}
		rep.NAT = natSummary(varies, rep.Allocation)
	}

	if mapper != nil {
		wctx, cancel := context.WithTimeout(ctx, timeout)
		st, _ := mapper.Wait(wctx)
		cancel()
		pm := &rep.PortMapping
		pm.Protocol = string(st.Protocol)
		if st.Gateway.IsValid() {
			pm.Gateway = st.Gateway.String()
		}
		if st.GatewayExternal.IsValid() {
			pm.GatewayExternal = st.GatewayExternal.String()
		}
		if st.External.IsValid() {
			pm.External = st.External.String()
			pm.Internal = st.Internal.String()
			pm.LeaseSeconds = int(st.Lease / time.Second)
			pm.Permanent = st.Permanent
		}
		switch {
		case st.Err != nil:
			pm.Error = st.Err.Error()
		case !st.External.IsValid():
			pm.Error = "no answer from the gateway within " + timeout.String()
		}
	}
	rep.Verdict = verdict(rep)
	switch {
	case answered > 0:
		return rep, nil
	case len(rep.TCP) == 0:
		return rep, errNoUDPAnswer
	case tcpWorks(rep) == nil:
		return rep, errNoAnswer
	}
	return rep, nil // relay only, over TCP
}

// probeEndpoint resolves ep.Addr and asks it for the socket's reflexive
// address three times; the RTT is the fastest answer.
func probeEndpoint(ctx context.Context, s *sock.Socket, ep *netcheckEndpoint, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	host, port, _ := net.SplitHostPort(ep.Addr)
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		ep.Error = "bad port " + port
		return
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		ep.Error = fmt.Sprintf("resolving %s: %v", host, err)
		return
	}
	ip := ips[0].Unmap()
	for _, a := range ips {
		if a.Unmap().Is4() {
			ip = a.Unmap()
			break
		}
	}
	to := netip.AddrPortFrom(ip, uint16(p))
	ep.Addr = to.String()
	best := time.Duration(-1)
	for range 3 {
		start := time.Now()
		got, err := s.STUNBinding(ctx, to)
		if err != nil {
			if best < 0 {
				ep.Error = err.Error()
			}
			break
		}
		if rtt := time.Since(start); best < 0 || rtt < best {
			best = rtt
		}
		ep.UDP, ep.Observed, ep.Error, ep.other = true, got.Mapped.String(), "", got.Other
	}
	if best >= 0 {
		ep.RTTms = float64(best.Microseconds()) / 1000
	}
}

func printNetcheck(w io.Writer, r *netcheckReport) {
	fmt.Fprintf(w, "local addresses:  %s\n", strings.Join(r.Local, ", "))
	fmt.Fprintf(w, "udp socket:       %s\n", r.Socket)
	fmt.Fprintf(w, "servers:\n")
	for _, ep := range r.Endpoints {
		if ep.UDP {
			fmt.Fprintf(w, "  %-9s %-27s udp ok       rtt %6.2fms  sees %s\n", ep.Kind, ep.Addr, ep.RTTms, ep.Observed)
		} else {
			fmt.Fprintf(w, "  %-9s %-27s udp FAILED   %s\n", ep.Kind, ep.Addr, ep.Error)
		}
	}
	printTCP(w, r)
	if len(r.Public) == 0 {
		fmt.Fprintf(w, "public address:   unknown (no STUN answer: UDP blocked? reach falls back to TCP signalling and relays)\n")
	} else {
		fmt.Fprintf(w, "public address:   %s\n", strings.Join(r.Public, ", "))
	}
	switch {
	case r.MappingVaries == nil:
		fmt.Fprintf(w, "mapping varies:   unknown (needs IPv4 answers from two endpoints; add --stun HOST:PORT)\n")
	case *r.MappingVaries:
		fmt.Fprintf(w, "mapping varies:   yes: a new public port per destination (symmetric NAT; hole punching is hard, a port mapping or relay helps)\n")
		if r.Allocation != "" {
			fmt.Fprintf(w, "port allocation:  %s\n", r.Allocation)
		}
		fmt.Fprintf(w, "nat:              %s\n", r.NAT)
	default:
		fmt.Fprintf(w, "mapping varies:   no: one public address for every destination (hole punching works)\n")
		fmt.Fprintf(w, "nat:              %s\n", r.NAT)
	}
	printIPv6(w, r)
	pm := r.PortMapping
	switch {
	case pm.Disabled:
		fmt.Fprintf(w, "port mapping:     not tried (--no-portmap)\n")
	case pm.External != "":
		lease := fmt.Sprintf("lease %v", time.Duration(pm.LeaseSeconds)*time.Second)
		if pm.Permanent {
			lease = "permanent"
		}
		fmt.Fprintf(w, "port mapping:     %s via gateway %s: %s -> %s, %s (removed on exit)\n", pm.Protocol, pm.Gateway, pm.External, pm.Internal, lease)
	case pm.Protocol != "":
		fmt.Fprintf(w, "port mapping:     %s via gateway %s (external %s): nothing usable: %s\n", pm.Protocol, pm.Gateway, orDash(pm.GatewayExternal), oneLine(pm.Error))
	default:
		fmt.Fprintf(w, "port mapping:     none: %s\n", oneLine(pm.Error))
	}
	fmt.Fprintf(w, "verdict:          %s\n", r.Verdict)
}

func orDash(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }
