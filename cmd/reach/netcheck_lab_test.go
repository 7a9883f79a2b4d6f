//go:build linux

package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabNetcheck runs `reach netcheck` inside three lab topologies, with
// a reach server and a coturn as the two STUN endpoints, and checks the
// verdicts; the outputs are in the test log.
//
//   - symmetric NAT whose gateway runs miniupnpd: the mapping varies by
//     destination, and PCP grants a mapping on the gateway's WAN address;
//   - port-restricted NAT without port mapping: one public address, no
//     gateway;
//   - double NAT whose home router runs miniupnpd: one public address (the
//     carrier's), and the gateway maps nothing usable.
func TestLabNetcheck(t *testing.T) {
	bin := buildBinary(t)
	l := natlab.NewT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	srv, _ := l.AddPublicHost(ctx, "srv")
	_, cs := reachlab.StartServer(t, srv)
	stunHost, _ := l.AddPublicHost(ctx, "turn")
	ct, err := stunHost.StartCoturn(ctx, natlab.CoturnConfig{})
	if err != nil {
		t.Fatal(err)
	}
	symGW, mu, err := l.AddUPnPRouter(ctx, natlab.RouterConfig{Name: "symgw", NAT: natlab.Symmetric}, natlab.UPnPConfig{})
	if err != nil {
		t.Fatal(err)
	}
	sym, _ := symGW.AddHost(ctx, "sym")
	seqGW, err := l.AddRouter(ctx, natlab.RouterConfig{Name: "seqgw", NAT: natlab.SymmetricSeq})
	if err != nil {
		t.Fatal(err)
	}
	seq, _ := seqGW.AddHost(ctx, "seq")
	prGW, _ := l.AddRouter(ctx, natlab.RouterConfig{Name: "prgw", NAT: natlab.PortRestricted})
	pr, _ := prGW.AddHost(ctx, "pr")
	home, _, err := l.AddDoubleNAT(ctx, "dbl", natlab.PortRestricted, natlab.PortRestricted)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := home.StartMiniupnpd(ctx, natlab.UPnPConfig{}); err != nil {
		t.Fatal(err)
	}
	dbl, err := home.AddHost(ctx, "dblh")
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		h       *natlab.Host
		varies  bool
		mapping bool
	}{
		{"symmetric+miniupnpd", sym, true, true},
		{"port-restricted, no port mapping", pr, false, false},
		{"double NAT, miniupnpd on the home router", dbl, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"netcheck", "--server", cs, "--stun", ct.Addr().String(), "--timeout", "3s"}
			out, err := tc.h.Exec(ctx, bin, args...)
			if err != nil {
				t.Fatalf("netcheck: %v\n%s", err, out)
			}
			t.Logf("$ reach netcheck --server CS --stun %s   # %s\n%s", ct.Addr(), tc.name, out)
			js, err := tc.h.Exec(ctx, bin, append(args, "--json")...)
			if err != nil {
				t.Fatalf("netcheck --json: %v\n%s", err, js)
			}
			var rep netcheckReport
			if err := json.Unmarshal([]byte(js), &rep); err != nil {
				t.Fatalf("JSON: %v\n%s", err, js)
			}
			for _, ep := range rep.Endpoints {
				if !ep.UDP || ep.RTTms <= 0 {
					t.Errorf("endpoint %s: udp %v rtt %v: %s", ep.Addr, ep.UDP, ep.RTTms, ep.Error)
				}
			}
			if rep.MappingVaries == nil || *rep.MappingVaries != tc.varies {
				t.Errorf("mapping varies %v, want %v", rep.MappingVaries, tc.varies)
			}
			if got := rep.PortMapping.External != ""; got != tc.mapping {
				t.Errorf("port mapping %+v, want mapped=%v", rep.PortMapping, tc.mapping)
			}
			if !tc.mapping && rep.PortMapping.Error == "" {
				t.Errorf("no reason given for the missing mapping")
			}
			if tc.mapping && !strings.HasPrefix(rep.PortMapping.External, symGW.WAN().String()+":") {
				t.Errorf("mapped %s, want on %s", rep.PortMapping.External, symGW.WAN())
			}
		})
	}
	// One reach server alone (its alternate STUN port) is enough to see
	// whether the mapping varies, and how a symmetric NAT picks ports.
	for _, tc := range []struct {
		name       string
		h          *natlab.Host
		varies     bool
		allocation string
		nat        string
	}{
		{"symmetric, one server", sym, true, "random", "symmetric, random"},
		{"sequential symmetric, one server", seq, true, "sequential +1", "symmetric, sequential +1"},
		{"port-restricted, one server", pr, false, "", "endpoint-independent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, err := tc.h.Exec(ctx, bin, "netcheck", "--server", cs, "--timeout", "3s", "--no-portmap", "--json")
			if err != nil {
				t.Fatalf("netcheck --json: %v\n%s", err, js)
			}
			var rep netcheckReport
			if err := json.Unmarshal([]byte(js), &rep); err != nil {
				t.Fatalf("JSON: %v\n%s", err, js)
			}
			alt := 0
			for _, ep := range rep.Endpoints {
				if ep.Kind == "reach-alt" && ep.UDP {
					alt++
				}
			}
			if alt != 1 {
				t.Errorf("%d answering alternate ports, want 1: %+v", alt, rep.Endpoints)
			}
			if rep.MappingVaries == nil || *rep.MappingVaries != tc.varies {
				t.Errorf("mapping varies %v, want %v", rep.MappingVaries, tc.varies)
			}
			if rep.Allocation != tc.allocation || rep.NAT != tc.nat {
				t.Errorf("allocation %q nat %q, want %q %q", rep.Allocation, rep.NAT, tc.allocation, tc.nat)
			}
			if rep.Verdict == "" {
				t.Errorf("no verdict")
			}
			out, _ := tc.h.Exec(ctx, bin, "netcheck", "--server", cs, "--timeout", "3s", "--no-portmap")
			if !strings.Contains(out, "nat:              "+tc.nat+"\n") {
				t.Errorf("no line 'nat: %s' in the report", tc.nat)
			}
			t.Logf("$ reach netcheck --server CS --no-portmap   # %s\n%s", tc.name, out)
		})
	}

	// netcheck deletes what it mapped before exiting.
	if maps, _ := mu.Mappings(ctx); len(maps) != 0 {
		t.Errorf("netcheck left mappings on miniupnpd: %v", maps)
	}
}
