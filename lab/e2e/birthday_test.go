package e2e_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabBirthday: a peer behind a symmetric NAT with random ports and a
// peer behind a port-restricted or restricted cone connect directly
// through the birthday mode (holepunch: 256 mappings on the symmetric
// side, up to 700 probes from the other, internal/holepunch/birthday.go)
// on at least half the dials, each within 3 s, both ways (even dials from
// the symmetric side), fresh nodes each dial, 64 KiB echoed intact, in
// both firewall variants (linux-host sites behind ISP hops). The server
// runs the relay, and what does not hit lands there, which the test
// counts. The bar: >= 10/20 direct, each within 3 s.
// REACH_LAB_DIALS sets the dials per pair (5).
func TestLabBirthday(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	n := dialsPerPair()
	sym := natlab.Kind(natlab.Symmetric)
	var table []string
	for _, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
		isp := fw == natlab.LinuxHost
		for i, other := range []natlab.Kind{natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.RestrictedCone)} {
			name := fmt.Sprintf("%s/%s<->%s", fw, sym, other)
			t.Run(name, func(t *testing.T) {
				a := s.SiteWith(t, fmt.Sprintf("b%s%da", fw[:1], i), natlab.SiteConfig{Kind: sym, Firewall: fw, ISP: isp})
				b := s.SiteWith(t, fmt.Sprintf("b%s%db", fw[:1], i), natlab.SiteConfig{Kind: other, Firewall: fw, ISP: isp})
				direct, relayed := 0, 0
				var times []string
				var worst, worstRelay time.Duration
				for k := range n {
					sess, el, done, err := freshDial(t, s, a.Host, b.Host, k)
					switch {
					case err != nil:
						t.Errorf("dial %d: %v", k, err)
					case sess.Strategy() == reach.StrategyHolepunch:
						direct++
						worst = max(worst, el)
						times = append(times, el.Round(time.Millisecond).String())
						if !strings.HasPrefix(sess.StrategyDetail(), "birthday") && other == natlab.Kind(natlab.PortRestricted) {
							t.Errorf("dial %d: holepunch to a port-restricted cone without the birthday mode? detail %q", k, sess.StrategyDetail())
						}
						if el > 3*time.Second {
							t.Errorf("dial %d: direct after %v, want within 3s", k, el)
						}
						t.Logf("dial %d: %s to %s in %v: %s", k, sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond), sess.StrategyDetail())
					default:
						relayed++
						worstRelay = max(worstRelay, el)
						t.Logf("dial %d: %s in %v", k, sess.Strategy(), el.Round(time.Millisecond))
					}
					done()
				}
				line := fmt.Sprintf("%-40s %d/%d direct (birthday) [%s], slowest %v; %d forwarded, slowest %v", name, direct, n,
					strings.Join(times, " "), worst.Round(time.Millisecond), relayed, worstRelay.Round(time.Millisecond))
				table = append(table, line)
				t.Log(line)
				if 2*direct < n {
					t.Errorf("%s: fewer than half direct", line)
				}
			})
		}
	}
	t.Log("\n" + strings.Join(table, "\n"))
}
