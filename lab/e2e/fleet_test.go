package e2e_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/internal/redistest"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/rendezvous/fleet"
	"github.com/reachp2p/reach/supernode"
)

// TestLabFleet: three servers of one fleet (one Redis) on three public
// hosts of the lab; in each pair one peer registers with server 1 and the
// other with server 3, and each pair gets its best strategy across
// servers, data intact both ways: full cone ↔ port-restricted punch
// holes, symmetric ↔ symmetric meet on the relay of the dialler's server
// (the listener links to it), in both directions; with a volunteer
// registered with server 3, a symmetric pair across servers goes through
// it, whichever side dials (volunteers are handed out by the dialler's
// server, or by the listener's when the dialler's has none).
func TestLabFleet(t *testing.T) {
	rds := redistest.Start(t)
	registry := func(name string) rendezvous.Registry {
		// The registry dials Redis on loopback from the test's own
		// network namespace (its goroutines are not in the lab's).
		reg, err := fleet.New(rds.URL(), fleet.Config{TTL: 3 * time.Second, Logger: natlab.TestLogger(t).With("fleet", name)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { reg.Close() })
		return reg
	}
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true, Registry: registry("srv")})
	s.AddServer(t, "srv2", reachlab.ServerConfig{Registry: registry("srv2")})
	_, rl3, cs3 := s.AddServer(t, "srv3", reachlab.ServerConfig{Registry: registry("srv3")})
	cs1 := s.ConnectString()

	cases := []struct {
		a, b natlab.Kind
		want string
	}{
		{natlab.Kind(natlab.FullCone), natlab.Kind(natlab.PortRestricted), reach.StrategyHolepunch},
		{natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.Symmetric), reach.StrategyRelay},
		// The same pair once a volunteer serves the fleet (below).
		{natlab.Kind(natlab.Symmetric), natlab.Kind(natlab.Symmetric), reach.StrategySupernode},
	}
	for i, c := range cases {
		if i == len(cases)-1 {
			// A volunteer registered with server 3, the last pair's
			// listener's: when A (server 1) dials, server 3 hands it
			// out; when B dials, B's own server does.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			vh, err := s.AddPublicHost(ctx, "vol")
			cancel()
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := startVolunteer(t, vh, cs3, supernode.Config{}); err != nil {
				t.Fatalf("volunteer on server 3 not admitted: %v", err)
			}
		}
		sa, sb := s.Pair(t, c.a, c.b)
		cfg := reach.Config{DisablePortMapping: true}
		cfg.Servers = []string{cs1}
		na := s.Node(t, sa.Host, cfg)
		cfg.Servers = []string{cs3}
		nb := s.Node(t, sb.Host, cfg)
		reachlab.Echo(t, na)
		reachlab.Echo(t, nb)
		for _, dir := range [][2]*reach.Node{{na, nb}, {nb, na}} {
			from, to := dir[0], dir[1]
			name := string(c.a) + "@1->" + string(c.b) + "@3"
			if from == nb {
				name = string(c.b) + "@3->" + string(c.a) + "@1"
			}
			t.Run(name, func(t *testing.T) {
				relayed := s.Relay.Stats().Bytes + rl3.Stats().Bytes
				var sess *reach.Session
				var err error
				// A registration reaches Redis in the background.
				for range 40 {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					sess, err = reachlab.CheckEcho(t, ctx, from, to, 1<<20)
					cancel()
					if !errors.Is(err, rendezvous.ErrUnknownPeer) {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer closeAndWaitGone(t, sess, from, to)
				if got := sess.Strategy(); got != c.want {
					t.Errorf("strategy %s, want %s", got, c.want)
				}
				if c.want == reach.StrategyRelay {
					if n := s.Relay.Stats().Bytes + rl3.Stats().Bytes - relayed; n < 2<<20 {
						t.Errorf("the relays forwarded %d bytes, want ≥ %d", n, 2<<20)
					}
				}
			})
		}
	}
}
