package e2e_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// IPv6 sites: dual-stack (IPv4 behind a port-restricted NAT, IPv6 routed
// behind a stateful firewall) and IPv6-only (no IPv4 at all, the same
// firewall).
var (
	dualStack = natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted), IPv6: true}
	ipv6Only  = natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted), IPv6Only: true}
)

// ipv6Pairs are the pairs of TestLabIPv6.
var ipv6Pairs = []struct {
	name string
	a, b natlab.SiteConfig
}{
	{"dual-stack", dualStack, dualStack},
	{"ipv6-only", ipv6Only, ipv6Only},
	{"ipv6-only-dual-stack", ipv6Only, dualStack},
}

// TestLabIPv6: peers behind stateful IPv6 firewalls (outbound and replies
// pass, unsolicited inbound is dropped), each behind its own router of
// the home or linux-host variant: dual-stack pairs, IPv6-only pairs and
// IPv6-only with dual-stack. The server is dual-stack and every node is
// given both its addresses, IPv4 first; a node on an IPv6-only host must
// register over QUIC on IPv6 by itself. Every dial, both ways, with fresh
// nodes, ends on a peer-to-peer path to the peer's own IPv6 address, never
// on the relay the server runs, with 64 KiB echoed intact. Two
// topologies, as in TestLabLinuxHost: no link delay, and the server far
// away (60 ms each way on its link) while the peers are near.
func TestLabIPv6(t *testing.T) {
	for _, topo := range []struct {
		name      string
		serverRTT time.Duration // added to the server's link, each way half
	}{
		{"zero-delay", 0},
		{"far-server", 120 * time.Millisecond},
	} {
		t.Run(topo.name, func(t *testing.T) {
			s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true, IPv6: true})
			if topo.serverRTT > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := s.Srv.Impair(ctx, natlab.Impairment{Delay: topo.serverRTT / 2}); err != nil {
					t.Fatal(err)
				}
			}
			ipv6PairsRun(t, s)
		})
	}
}

// ipv6PairsRun dials each of ipv6Pairs in both firewall variants on s.
func ipv6PairsRun(t *testing.T, s *reachlab.Scenario) {
	n := dialsPerPair()
	for _, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
		for i, p := range ipv6Pairs {
			name := fmt.Sprintf("%s/%s", fw, p.name)
			t.Run(name, func(t *testing.T) {
				p.a.Firewall, p.b.Firewall = fw, fw
				a := s.SiteWith(t, fmt.Sprintf("v6%s%da", fw[:1], i), p.a)
				b := s.SiteWith(t, fmt.Sprintf("v6%s%db", fw[:1], i), p.b)
				for _, site := range []*natlab.Site{a, b} {
					if !site.Host.Addr().IsValid() {
						checkRegisteredIPv6(t, s, site.Host)
					}
				}
				p2p := 0
				var worst time.Duration
				for k := range n {
					sess, el, done, err := freshDial(t, s, a.Host, b.Host, k)
					to := b.Host
					if k%2 == 1 {
						to = a.Host
					}
					switch {
					case err != nil:
						t.Errorf("dial %d: %v", k, err)
					case sess.Strategy() != reach.StrategyHolepunch && sess.Strategy() != reach.StrategyDirect:
						t.Errorf("dial %d: %s after %v, want a peer-to-peer path", k, sess.Strategy(), el)
					case sess.RemoteAddr().Addr() != to.Addr6():
						t.Errorf("dial %d: %s over %v, want %s's own IPv6 address %v", k, sess.Strategy(), sess.RemoteAddr(), to.Name(), to.Addr6())
					default:
						p2p++
						t.Logf("dial %d: %s over %v after %v", k, sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond))
					}
					worst = max(worst, el)
					done()
				}
				t.Logf("%s: %d/%d peer to peer over IPv6, slowest %v", name, p2p, n, worst.Round(time.Millisecond))
			})
		}
	}
}

// checkRegisteredIPv6 starts a node on h, an IPv6-only host, and checks
// that it registered with the server's IPv6 address over QUIC: the server
// saw its UDP socket at the host's own address (no NAT on IPv6).
func checkRegisteredIPv6(t *testing.T, s *reachlab.Scenario, h *natlab.Host) {
	t.Helper()
	nd := s.Node(t, h, reach.Config{DisablePortMapping: true})
	defer nd.Close()
	want := netip.AddrPortFrom(h.Addr6(), nd.LocalAddr().Port())
	var st reach.Status
	ok := reachlab.WaitFor(5*time.Second, func() bool {
		st = nd.Status()
		return st.Observed == want
	})
	if !ok {
		t.Fatalf("node on %s: registered with %q, observed %v; want the server's IPv6 address over QUIC, observed %v", h.Name(), st.Server, st.Observed, want)
	}
	if v6 := s.ConnectStrings()[1]; st.Server != v6 {
		t.Errorf("node on %s registered with %q, want %q", h.Name(), st.Server, v6)
	}
}
