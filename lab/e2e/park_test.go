package e2e_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/rendezvous"
)

// TestLabParkedRegistration: a node behind a port-restricted NAT whose UDP
// mappings expire after 3 s parks its idle registration (the server parks
// after 1 s; keepalive datagrams every 1 s, the 25 s default's ratio to a
// 30 s NAT scaled down) and sits idle for 10 s, more than three mapping
// lifetimes, with no QUIC connection to the server. A dialler behind
// another NAT then connects to it by hole punching: the server's WAKE
// came through the listener's NAT on the mapping the keepalives held, the
// node re-attached and answered the introduction. The control, with
// keepalives every 30 s (beyond the NAT's timeout) and everything else
// equal, fails with rendezvous.ErrNotWoken: so the keepalives, and
// nothing else, held the mapping, and a node that cannot be woken costs
// the dialler a named error within the wake timeout, not a hang.
func TestLabParkedRegistration(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepalive time.Duration
	}{{"keepalive-1s", time.Second}, {"control-30s", 30 * time.Second}} {
		t.Run(tc.name, func(t *testing.T) { testLabParked(t, tc.keepalive) })
	}
}

func testLabParked(t *testing.T, keepalive time.Duration) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Park: rendezvous.ParkConfig{After: time.Second, Keepalive: keepalive, WakeTimeout: 3 * time.Second}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host := func(name string) *natlab.Host {
		rt, err := s.AddRouter(ctx, natlab.RouterConfig{Name: name + "r", NAT: natlab.PortRestricted, UDPTimeout: kaNATTimeout})
		if err != nil {
			t.Fatal(err)
		}
		h, err := rt.AddHost(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	ha, hb := host("pka"), host("pkb")
	nb := s.Node(t, hb, reach.Config{})
	reachlab.Echo(t, nb)
	if !reachlab.WaitFor(10*time.Second, func() bool { return s.Server.Stats().Parked == 1 }) {
		t.Fatalf("the listener's registration did not park: %+v", s.Server.Stats())
	}
	t.Logf("listener parked; idle for %v (NAT UDP timeout %v)", kaIdle, kaNATTimeout)
	time.Sleep(kaIdle)
	st := s.Server.Stats()
	if st.Parked != 1 {
		t.Fatalf("after the idle period: %d parked, want 1", st.Parked)
	}
	if keepalive < kaNATTimeout && st.Keepalives < 5 {
		t.Fatalf("after the idle period: %d keepalives, want one each second", st.Keepalives)
	}

	na := s.Node(t, ha, reach.Config{})
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
	defer dcancel()
	start := time.Now()
	sess, err := na.DialSession(dctx, nb.ID())
	if keepalive > kaNATTimeout {
		if !errors.Is(err, rendezvous.ErrNotWoken) {
			t.Fatalf("control: dial: %v, want ErrNotWoken (the WAKE died at the expired mapping)", err)
		}
		t.Logf("control: dial failed after %v as expected: %v", time.Since(start), err)
		return
	}
	if err != nil {
		t.Fatalf("dial the parked node: %v (server: %+v)", err, s.Server.Stats())
	}
	t.Logf("dialled the parked node in %v: %s", time.Since(start), sess.Strategy())
	if sess.Strategy() != reach.StrategyHolepunch {
		t.Errorf("strategy %s, want holepunch", sess.Strategy())
	}
	if err := transfer(sess); err != nil {
		t.Fatalf("transfer: %v", err)
	}
	if st := s.Server.Stats(); st.Resumed < 1 || st.Wakes < 1 {
		t.Errorf("server: %d resumed, %d WAKEs; want the node woken and resumed", st.Resumed, st.Wakes)
	}
}
