package e2e_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabMapping: a node learns how its NAT maps its socket from its
// server's two STUN ports: "independent" behind a port-restricted NAT,
// "varies" behind a symmetric one. Two symmetric peers, which cannot punch,
// then connect through the relay (their offers say so and the forwarding
// rungs start at once: BenchmarkLabConnect measures it) and move data
// intact; a symmetric dialler to a port-restricted listener too, unless
// the birthday mode finds it a direct path.
func TestLabMapping(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	sa, sb := s.Pair(t, natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.Symmetric))
	pr := s.Site(t, "mpr", natlab.Kind(natlab.PortRestricted))
	cfg := reach.Config{DisablePortMapping: true, UpgradeInterval: -1}
	na, nb, np := s.Node(t, sa.Host, cfg), s.Node(t, sb.Host, cfg), s.Node(t, pr.Host, cfg)
	for _, c := range []struct {
		n    *reach.Node
		want string
	}{{na, "varies"}, {nb, "varies"}, {np, "independent"}} {
		reachlab.MustWaitFor(t, 10*time.Second, "the mapping measured", func() bool { return c.n.Mapping() != "" })
		if got := c.n.Status().Mapping; got != c.want {
			t.Errorf("%s: mapping %q, want %q", c.n.ID().Short(), got, c.want)
		}
	}
	reachlab.Echo(t, nb)
	reachlab.Echo(t, np)
	for _, to := range []*reach.Node{nb, np} {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		sess, err := reachlab.CheckEcho(t, ctx, na, to, 1<<20)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		// symmetric (random) -> symmetric has no direct path; symmetric ->
		// port-restricted may go direct by the birthday mode (issue 18) and
		// otherwise forwards. Nothing else may win.
		switch {
		case sess.Strategy() == reach.StrategyRelay:
		case to == np && sess.Strategy() == reach.StrategyHolepunch && strings.HasPrefix(sess.StrategyDetail(), "birthday"):
		default:
			t.Errorf("symmetric -> %s: strategy %s (%q), want relay or, to the port-restricted cone, a birthday hole punch",
				to.ID().Short(), sess.Strategy(), sess.StrategyDetail())
		}
	}
}
