package e2e_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabMoveIdleThenActive: a relayed session between two
// port-restricted sites whose direct path is cut sits idle for 40 s: its
// searches for a direct path come less and less often (at most 5 in that
// time; every 5 s would be 8). Then the path is mended and a stream
// starts: traffic ends the idle pause, and the session moves to the
// direct path within 5 s of the stream's start, its bytes intact.
func TestLabMoveIdleThenActive(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true, DisableFlights: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	if err := sa.Router.Block(ctx, sb.Router.WAN()); err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int32
	ev := newEvents()
	cfg := reach.Config{DisablePortMapping: true}
	cfgA := cfg
	cfgA.OnPathEvent = func(e reach.PathEvent) {
		if e.Kind == reach.PathUpgradeAttempt {
			attempts.Add(1)
		}
		ev.add(e)
	}
	na := s.Node(t, sa.Host, cfgA)
	nb := s.Node(t, sb.Host, cfg)
	const size = 64 << 20
	x := receiveOn(t, ctx, nb, size)
	c, err := na.Dial(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Session().Strategy(); got != reach.StrategyRelay {
		t.Fatalf("with the direct path cut: strategy %q, want relay", got)
	}
	time.Sleep(40 * time.Second)
	idle := attempts.Load()
	t.Logf("%d searches for a direct path in 40 s idle", idle)
	if idle > 5 || idle < 2 {
		t.Errorf("%d searches in 40 s idle, want 2 to 5 (backing off)", idle)
	}
	if err := sa.Router.Unblock(ctx); err != nil {
		t.Fatal(err)
	}
	x.send(c, 23)
	if e := movedTo(t, ev, x, 5*time.Second, reach.StrategyHolepunch); !e.Path.IsValid() {
		t.Fatalf("moved to %+v", e)
	}
	x.check(t, ctx)
}
