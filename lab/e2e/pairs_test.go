package e2e_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/matrix"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

type pairResult struct {
	strategy string
	path     string
	elapsed  time.Duration
}

// connectPair starts a node on each host, dials from a to b, moves size
// bytes both ways, and returns what won.
func connectPair(t *testing.T, s *reachlab.Scenario, a, b *natlab.Host, size int) pairResult {
	t.Helper()
	na := s.Node(t, a, reach.Config{})
	nb := s.Node(t, b, reach.Config{})
	reachlab.Echo(t, nb)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sess, el := dialEcho(t, ctx, na, nb, size)
	return pairResult{sess.Strategy(), sess.RemoteAddr().String(), el}
}

// oracle is the strategy the connectivity matrix expects when a peer at a
// site of kind dialer dials one of kind listener with reach's full ladder,
// and why (matrix.Best).
func oracle(dialer, listener natlab.Kind) (string, string) {
	return matrix.Best(matrix.Kind(dialer), matrix.Kind(listener), reach.Strategies())
}

// TestLabPairs: peers behind every pair of {open, full cone, restricted,
// port-restricted, double NAT} connect with the strategy the matrix's
// oracle expects for the pair (matrix.Best: direct to an open listener,
// holepunch to any NAT'd one), never anything slower; 10 MB move both
// ways intact.
func TestLabPairs(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	kinds := []natlab.Kind{natlab.Open, natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone), natlab.Kind(natlab.PortRestricted), natlab.KindDouble}
	sites := map[string]*natlab.Site{}
	for i, k := range kinds {
		for _, side := range []string{"a", "b"} {
			sites[fmt.Sprintf("%d%s", i, side)] = s.Site(t, fmt.Sprintf("k%d%s", i, side), k)
		}
	}
	var table strings.Builder
	for i := range kinds {
		for j := i; j < len(kinds); j++ {
			a, b := sites[fmt.Sprintf("%da", i)], sites[fmt.Sprintf("%db", j)]
			name := fmt.Sprintf("%s->%s", kinds[i], kinds[j])
			t.Run(name, func(t *testing.T) {
				want, why := oracle(a.Kind, b.Kind)
				r := connectPair(t, s, a.Host, b.Host, 10<<20)
				fmt.Fprintf(&table, "%-36s %-10s %-22s %v\n", name, r.strategy, r.path, r.elapsed.Round(time.Millisecond))
				if r.strategy != want {
					t.Errorf("strategy %s, want %s: %s", r.strategy, want, why)
				}
			})
		}
	}
	t.Log("\n" + table.String())
}

// TestLabSymmetric: a peer behind a symmetric NAT connects directly (hole
// punched, no relay) to peers behind full-cone and restricted-cone NATs,
// in both directions: the cone side learns the symmetric side's
// peer-reflexive address from its checks. The matrix's oracle agrees.
func TestLabSymmetric(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	sym := s.Site(t, "sym", natlab.Kind(natlab.Symmetric))
	for _, k := range []natlab.Kind{natlab.Kind(natlab.FullCone), natlab.Kind(natlab.RestrictedCone)} {
		other := s.Site(t, string(k)[:4], k)
		for _, dir := range [][2]*natlab.Site{{sym, other}, {other, sym}} {
			t.Run(string(dir[0].Kind)+"->"+string(dir[1].Kind), func(t *testing.T) {
				want, why := oracle(dir[0].Kind, dir[1].Kind)
				if want != reach.StrategyHolepunch {
					t.Fatalf("the oracle expects %s (%s); this test is about holepunch", want, why)
				}
				r := connectPair(t, s, dir[0].Host, dir[1].Host, 1<<20)
				if r.strategy != want {
					t.Errorf("strategy %s, want %s: %s", r.strategy, want, why)
				}
			})
		}
	}
}

// TestLabSameLAN: two peers behind one NAT without hairpinning connect over
// their LAN addresses.
func TestLabSameLAN(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rt, err := s.AddRouter(ctx, natlab.RouterConfig{Name: "home", NAT: natlab.PortRestricted, Hairpin: false})
	if err != nil {
		t.Fatal(err)
	}
	a, err := rt.AddHost(ctx, "lana")
	if err != nil {
		t.Fatal(err)
	}
	b, err := rt.AddHost(ctx, "lanb")
	if err != nil {
		t.Fatal(err)
	}
	r := connectPair(t, s, a, b, 10<<20)
	if r.strategy != reach.StrategyDirect {
		t.Errorf("strategy %s, want direct", r.strategy)
	}
	if want := b.Addr().String(); !strings.HasPrefix(r.path, want) {
		t.Errorf("path %s, want b's LAN address %s", r.path, want)
	}
}
