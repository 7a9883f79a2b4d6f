package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabUpgradeToTCP: a session that had to start on the relay moves
// its new streams to a TCP path once one works (issue 17: "a session may
// move from relay to a TCP path too"). A peer behind a firewall that
// blocks UDP but lets TCP out dials a port-restricted peer while the
// path between their routers is cut: the relay wins. The cut ends; the
// background upgrade punches TCP and reports PathUpgraded with
// holepunch-tcp; a new dial takes that session (TCP), the relayed one
// keeps working until it is closed, and both carry data intact.
func TestLabUpgradeToTCP(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sa, sb := s.Pair(t, natlab.Kind(natlab.UDPBlockedTCPOpen), natlab.Kind(natlab.PortRestricted))
	cut, mend := cutter(t, ctx, sa, sb)
	cut()
	ev := newEvents()
	cfg := reach.Config{DisablePortMapping: true, UpgradeInterval: time.Second}
	cfgA := cfg
	cfgA.OnPathEvent = ev.add
	na := s.Node(t, sa.Host, cfgA)
	nb := s.Node(t, sb.Host, cfg)
	reachlab.Echo(t, nb)
	relayed, el, err := reachlab.Dial(ctx, na, nb)
	if err != nil {
		t.Fatal(err)
	}
	if relayed.Strategy() != reach.StrategyRelay {
		t.Fatalf("with the path cut: strategy %q after %v, want relay", relayed.Strategy(), el)
	}
	ev.wait(t, reach.PathUpgradeAttempt, 5*time.Second)
	mend()
	mended := time.Now()
	var up reach.PathEvent
	for up.Kind != reach.PathUpgraded {
		up = ev.wait(t, reach.PathUpgraded, 30*time.Second)
	}
	t.Logf("upgraded to %s %v after the cut ended", up.Strategy, time.Since(mended).Round(time.Millisecond))
	if up.Strategy != reach.StrategyHolepunchTCP {
		t.Fatalf("upgraded to %q, want holepunch-tcp", up.Strategy)
	}
	sess, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	if sess == relayed || sess.Strategy() != reach.StrategyHolepunchTCP || sess.Transport() != "tcp" {
		t.Fatalf("a new dial after the upgrade: strategy %q over %q (the relayed session: %v), want holepunch-tcp over tcp",
			sess.Strategy(), sess.Transport(), sess == relayed)
	}
	if err := reachlab.RoundTrip(ctx, sess, 4<<20); err != nil {
		t.Fatalf("4 MiB each way over the TCP path: %v", err)
	}
	if err := reachlab.RoundTrip(ctx, relayed, 1<<20); err != nil {
		t.Fatalf("1 MiB each way over the relayed session after the upgrade: %v", err)
	}
}
