package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/supernode"
)

// TestLabMoveForwardedDirect: two peers behind port-restricted NATs whose
// direct path is cut (a firewall rule on one router), with a server that
// relays nothing, connect over a forwarded path: coturn as their TURN
// relay, or an open volunteer (supernode). One stream starts; the rule
// goes after 3 s and the session moves to the direct path within 5 s,
// with the stream running; the rule comes back and the session falls back
// to the forwarded path within 5 s; it goes again and the session is
// direct once more. The stream's bytes arrive intact (SHA-256): TURN and
// supernode sessions are paths of the node's socket, not sessions of
// their own.
func TestLabMoveForwardedDirect(t *testing.T) {
	turnSetup := func(t *testing.T) func(context.Context, *reachlab.Scenario) reach.Config {
		return func(ctx context.Context, s *reachlab.Scenario) reach.Config {
			th, err := s.AddPublicHost(ctx, "turn")
			if err != nil {
				t.Fatal(err)
			}
			ct, err := th.StartCoturn(ctx, natlab.CoturnConfig{Users: map[string]string{"alice": "wonderland"}})
			if err != nil {
				t.Fatal(err)
			}
			return reach.Config{TURN: []reach.TURNServer{{URL: "turn:" + ct.Addr().String(), Username: "alice", Password: "wonderland"}}}
		}
	}
	t.Run("turn", func(t *testing.T) { testMoveForwarded(t, reach.StrategyTURN, false, turnSetup(t)) })
	// Born on the hole-punched path: when it is cut, the session falls
	// back to TURN (the only forwarded path: the server relays nothing).
	t.Run("turn-born-direct", func(t *testing.T) { testMoveForwarded(t, reach.StrategyTURN, true, turnSetup(t)) })
	t.Run("supernode", func(t *testing.T) {
		testMoveForwarded(t, reach.StrategySupernode, false, func(ctx context.Context, s *reachlab.Scenario) reach.Config {
			vh, err := s.AddPublicHost(ctx, "vol")
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := startVolunteer(t, vh, s.ConnectString(), supernode.Config{}); err != nil {
				t.Fatalf("open volunteer not admitted: %v", err)
			}
			return reach.Config{}
		})
	})
}

// testMoveForwarded runs TestLabMoveForwardedDirect with the forwarded
// path setup makes (it returns the peers' config); bornDirect dials with
// the direct path open and cuts it once the stream runs.
func testMoveForwarded(t *testing.T, fwd string, bornDirect bool, setup func(context.Context, *reachlab.Scenario) reach.Config) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{}) // no relay
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := setup(ctx, s)
	cfg.DisablePortMapping = true
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	cut, mend := cutter(t, ctx, sa, sb)
	if !bornDirect {
		cut()
	}
	ev := newEvents()
	cfgA := cfg
	cfgA.OnPathEvent = ev.add
	na := s.Node(t, sa.Host, cfgA)
	nb := s.Node(t, sb.Host, cfg)
	if fwd == reach.StrategyTURN {
		reachlab.MustWaitFor(t, 5*time.Second, "TURN allocations on both nodes", func() bool {
			return na.Status().TURN.IsValid() && nb.Status().TURN.IsValid()
		})
	}

	const size = 160 << 20 // 10 s at moveRate: running through every change below
	x := receiveOn(t, ctx, nb, size)
	c, err := na.Dial(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	sess := c.Session()
	if bornDirect {
		if sess.Strategy() != reach.StrategyHolepunch {
			t.Fatalf("with the direct path open: strategy %q, want holepunch", sess.Strategy())
		}
		x.send(c, 17)
		reachlab.MustWaitFor(t, 30*time.Second, "4 MiB over the direct path", func() bool { return x.received.Load() > 4<<20 })
		cut()
		movedTo(t, ev, x, 5*time.Second, fwd)
		atFwd := x.received.Load()
		reachlab.MustWaitFor(t, 30*time.Second, "1 MiB more over "+fwd, func() bool { return x.received.Load() > atFwd+1<<20 })
	} else {
		if sess.Strategy() != fwd {
			t.Fatalf("with the direct path cut: strategy %q, want %s", sess.Strategy(), fwd)
		}
		x.send(c, 17)
		time.Sleep(3 * time.Second)
	}
	mend()
	if e := movedTo(t, ev, x, 5*time.Second, reach.StrategyHolepunch); !e.Path.IsValid() || sess.Strategy() != reach.StrategyHolepunch {
		t.Fatalf("after the move: path %v, strategy %q", e.Path, sess.Strategy())
	}
	atDirect := x.received.Load()
	reachlab.MustWaitFor(t, 30*time.Second, "4 MiB more over the direct path", func() bool { return x.received.Load() > atDirect+4<<20 })

	cut()
	movedTo(t, ev, x, 5*time.Second, fwd)
	atFwd := x.received.Load()
	reachlab.MustWaitFor(t, 30*time.Second, "1 MiB more over "+fwd, func() bool { return x.received.Load() > atFwd+1<<20 })
	mend()
	movedTo(t, ev, x, 10*time.Second, reach.StrategyHolepunch)
	x.check(t, ctx)
	born := fwd
	if bornDirect {
		born = "direct -> " + fwd
	}
	t.Logf("%d MiB intact across %s -> direct -> %s -> direct", size>>20, born, fwd)
}
