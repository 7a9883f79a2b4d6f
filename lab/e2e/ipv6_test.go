package e2e_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabIPv6: two dual-stack peers, each behind a router that NATs IPv4
// and routes IPv6 behind a stateful firewall (outbound and replies pass,
// unsolicited inbound is dropped): every dial, both ways, with fresh
// nodes, ends on a peer-to-peer path over IPv6, never forwarded.
func TestLabIPv6(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	n := dialsPerPair()
	for _, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
		t.Run(string(fw), func(t *testing.T) {
			kind := natlab.Kind(natlab.PortRestricted)
			a := s.SiteWith(t, fmt.Sprintf("v6%sa", fw[:1]), natlab.SiteConfig{Kind: kind, Firewall: fw, IPv6: true})
			b := s.SiteWith(t, fmt.Sprintf("v6%sb", fw[:1]), natlab.SiteConfig{Kind: kind, Firewall: fw, IPv6: true})
			v6 := 0
			for k := range n {
				sess, el, done, err := freshDial(t, s, a.Host, b.Host, k)
				switch {
				case err != nil:
					t.Errorf("dial %d: %v", k, err)
				case sess.Strategy() != reach.StrategyHolepunch && sess.Strategy() != reach.StrategyDirect:
					t.Errorf("dial %d: %s after %v, want a peer-to-peer path", k, sess.Strategy(), el)
				case !sess.RemoteAddr().Addr().Is6() || sess.RemoteAddr().Addr().Is4In6():
					t.Errorf("dial %d: %s over %v, want IPv6", k, sess.Strategy(), sess.RemoteAddr())
				default:
					v6++
					t.Logf("dial %d: %s over %v after %v", k, sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond))
				}
				done()
			}
			t.Logf("%s: %d/%d over IPv6", fw, v6, n)
		})
	}
}
