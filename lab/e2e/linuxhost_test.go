package e2e_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// linuxHostPairs are the pairs issue 12 names: each side behind a router
// of the linux-host variant (it accepts packets to itself on its WAN) and
// behind its own provider's access router.
var linuxHostPairs = []struct{ a, b natlab.Kind }{
	{natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted)},
	{natlab.Kind(natlab.RestrictedCone), natlab.Kind(natlab.Symmetric)},
	{natlab.Kind(natlab.FullCone), natlab.Kind(natlab.Symmetric)},
	{natlab.KindDouble, natlab.Kind(natlab.PortRestricted)},
}

// dialsPerPair is how many fresh pairs of nodes each pair kind dials
// (REACH_LAB_DIALS overrides it).
func dialsPerPair() int {
	if n, err := strconv.Atoi(os.Getenv("REACH_LAB_DIALS")); err == nil && n > 0 {
		return n
	}
	return 5
}

// TestLabLinuxHost: peers behind linux-host routers (no input firewall:
// a punch packet that arrives before the LAN host sent anything leaves a
// conntrack entry that moves its later mapping), each behind its own ISP,
// go direct (hole punched) on every dial, both ways, in under 2 s, with
// fresh nodes (fresh ports) each time; the home variant too. Two
// topologies: no link delay at all, and the server far away (60 ms each
// way on its link) while the peers are near each other, where the
// listener's first packets would reach the dialler long before the
// dialler has the listener's answer. Before the listener's primers and
// hold, linux-host port-restricted pairs went direct about half the time.
//
// The server runs the relay, as `reach server` does: the pairs whose NATs
// keep one mapping per socket (port-restricted, CGNAT) then fly first
// (their handshake starts through the server) and must still go direct;
// once more at zero delay without a relay, where no dial flies first.
func TestLabLinuxHost(t *testing.T) {
	for _, topo := range []struct {
		name      string
		serverRTT time.Duration // added to the server's link, each way half
		noRelay   bool
	}{
		{"zero-delay", 0, false},
		{"far-server", 120 * time.Millisecond, false},
		{"zero-delay-no-relay", 0, true},
	} {
		t.Run(topo.name, func(t *testing.T) {
			s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: !topo.noRelay})
			if topo.serverRTT > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := s.Srv.Impair(ctx, natlab.Impairment{Delay: topo.serverRTT / 2}); err != nil {
					t.Fatal(err)
				}
			}
			linuxHostPairsRun(t, s)
		})
	}
}

// linuxHostPairsRun dials each of linuxHostPairs in both firewall
// variants on s.
func linuxHostPairsRun(t *testing.T, s *reachlab.Scenario) {
	n := dialsPerPair()
	for _, fw := range []natlab.Firewall{natlab.LinuxHost, natlab.Home} {
		for i, p := range linuxHostPairs {
			name := fmt.Sprintf("%s/%s->%s", fw, p.a, p.b)
			t.Run(name, func(t *testing.T) {
				a := s.SiteWith(t, fmt.Sprintf("%s%da", fw[:1], i), natlab.SiteConfig{Kind: p.a, Firewall: fw, ISP: true})
				b := s.SiteWith(t, fmt.Sprintf("%s%db", fw[:1], i), natlab.SiteConfig{Kind: p.b, Firewall: fw, ISP: true})
				direct := 0
				var worst time.Duration
				flights := s.Server.Stats().FlightPackets
				for k := range n {
					sess, el, done, err := freshDial(t, s, a.Host, b.Host, k)
					switch {
					case err != nil:
						t.Errorf("dial %d: %v", k, err)
					case sess.Strategy() != reach.StrategyHolepunch:
						t.Errorf("dial %d: %s after %v, want holepunch", k, sess.Strategy(), el)
					case el > 2*time.Second:
						t.Errorf("dial %d: holepunch after %v, want under 2s", k, el)
						direct++
					default:
						direct++
					}
					worst = max(worst, el)
					done()
				}
				flights = s.Server.Stats().FlightPackets - flights
				t.Logf("%s: %d/%d direct, slowest %v; %d first-flight packets relayed", name, direct, n, worst.Round(time.Millisecond), flights)
				// Both NATs keep one mapping per socket: with a relay
				// to fall back to, the dials fly first.
				// Without a relay no dial may: a session that wins on the
				// server's word needs a fallback. (A symmetric side sends
				// one flight packet, which its listener drops.)
				switch symmetric := p.a == natlab.Kind(natlab.Symmetric) || p.b == natlab.Kind(natlab.Symmetric); {
				case s.Relay != nil && !symmetric && flights == 0:
					t.Errorf("%s: no dial flew first", name)
				case s.Relay == nil && flights != 0:
					t.Errorf("%s: %d first-flight packets without a relay to fall back to", name, flights)
				}
			})
		}
	}
}

// freshDial makes a fresh node on each host (fresh keys, fresh ports), the
// listener echoing, and dials: the even dials from a to b, the odd ones
// from b to a; then it moves 64 KiB both ways. done closes both nodes.
func freshDial(t *testing.T, s *reachlab.Scenario, a, b *natlab.Host, k int) (*reach.Session, time.Duration, func(), error) {
	from, to := a, b
	if k%2 == 1 {
		from, to = to, from
	}
	na := s.Node(t, from, reach.Config{DisablePortMapping: true})
	nb := s.Node(t, to, reach.Config{DisablePortMapping: true})
	reachlab.Echo(t, nb)
	// A listener that runs has measured its NAT's mapping (which decides
	// whether it takes a first flight); the dialler's Dial waits for its
	// own.
	reachlab.MustWaitFor(t, 10*time.Second, "the listener's mapping measured", func() bool { return nb.Mapping() != "" })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess, el, err := reachlab.Dial(ctx, na, nb)
	if err == nil {
		err = reachlab.RoundTrip(ctx, sess, 64<<10)
	}
	return sess, el, func() { na.Close(); nb.Close() }, err
}
