package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabUpgradeMixedStream: a relayed session of a mixed pair (the
// dialler on a UDP link, the listener on a TLS link) runs over a relayed
// stream through the dialler's streams-only link, which cannot move; a
// better path still wins when it appears: the background upgrade finds
// it and reports PathUpgraded, and a new dial takes it. A port-restricted
// peer dials a peer whose network blocks UDP but lets TCP out while the
// path between their routers is cut; the cut ends; the upgrade punches
// TCP. Both sessions carry data intact.
func TestLabUpgradeMixedStream(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.UDPBlockedTCPOpen))
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
	if relayed.Strategy() != reach.StrategyRelay || relayed.QUIC() != nil {
		t.Fatalf("with the path cut: strategy %q (QUIC %v) after %v, want relay over a relayed stream",
			relayed.Strategy(), relayed.QUIC() != nil, el)
	}
	if na.Status().RelayTransport != "udp" || nb.Status().RelayTransport != "tls" {
		t.Fatalf("relay links: dialler %q, listener %q; want udp and tls", na.Status().RelayTransport, nb.Status().RelayTransport)
	}
	if err := reachlab.RoundTrip(ctx, relayed, 1<<20); err != nil {
		t.Fatalf("1 MiB each way over the relayed stream: %v", err)
	}
	ev.wait(t, reach.PathUpgradeAttempt, 5*time.Second)
	mend()
	mended := time.Now()
	var up reach.PathEvent
	for up.Kind != reach.PathUpgraded {
		up = ev.wait(t, reach.PathUpgraded, 30*time.Second)
	}
	t.Logf("upgraded to %s %v after the cut ended", up.Strategy, time.Since(mended).Round(time.Millisecond))
	sess, err := na.DialSession(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	if sess == relayed || sess.Strategy() == reach.StrategyRelay {
		t.Fatalf("a new dial after the upgrade: strategy %q (the relayed session: %v), want the upgraded path",
			sess.Strategy(), sess == relayed)
	}
	if err := reachlab.RoundTrip(ctx, sess, 4<<20); err != nil {
		t.Fatalf("4 MiB each way over the upgraded path: %v", err)
	}
	if err := reachlab.RoundTrip(ctx, relayed, 1<<20); err != nil {
		t.Fatalf("1 MiB each way over the relayed session after the upgrade: %v", err)
	}
}
