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
func TestLabLinuxHost(t *testing.T) {
	for _, topo := range []struct {
		name      string
		serverRTT time.Duration // added to the server's link, each way half
	}{
		{"zero-delay", 0},
		{"far-server", 120 * time.Millisecond},
	} {
		t.Run(topo.name, func(t *testing.T) {
			s := reachlab.NewScenario(t, reachlab.ServerConfig{})
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
				t.Logf("%s: %d/%d direct, slowest %v", name, direct, n, worst.Round(time.Millisecond))
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
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess, el, err := reachlab.Dial(ctx, na, nb)
	if err == nil {
		err = reachlab.RoundTrip(ctx, sess, 64<<10)
	}
	return sess, el, func() { na.Close(); nb.Close() }, err
}
