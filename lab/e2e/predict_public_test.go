//go:build linux

package e2e_test

import (
	"context"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabPredictPublicPeer: a public host and a host behind a
// sequential-symmetric linux-host router (behind its provider's router),
// 20 ms on both access links, fresh nodes each dial: three dials from the
// public host (holepunch, by port prediction), then three from the other
// side, which must go direct over UDP. Before the fix the public
// listener's primers and pings to the dialler's predicted ports (TTL 2,
// which from a public host reaches the peer's router) became flows to
// that router, whose NAT then dropped the dialler's own next flows on
// those ports: 3 of 3 dials fell to direct-tcp (the matrix, 2026-12-01).
func TestLabPredictPublicPeer(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	seq := s.SiteWith(t, "pps", natlab.SiteConfig{Kind: natlab.Kind(natlab.SymmetricSeq), Firewall: natlab.LinuxHost, ISP: true})
	pub := s.SiteWith(t, "ppo", natlab.SiteConfig{Kind: natlab.Open})
	for _, h := range []*natlab.Host{&seq.Router.Host, pub.Host} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := h.Impair(ctx, natlab.Impairment{Delay: 20 * time.Millisecond})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	for k := range 6 {
		from, to, want := pub.Host, seq.Host, reach.StrategyHolepunch
		if k >= 3 {
			from, to, want = seq.Host, pub.Host, reach.StrategyDirect
		}
		cfg := reach.Config{DisablePortMapping: true}
		na := s.Node(t, from, cfg)
		nb := s.Node(t, to, cfg)
		ns := nb
		if from == seq.Host {
			ns = na
		}
		reachlab.MustWaitFor(t, 5*time.Second, "the sequential node's allocation", func() bool { return ns.Allocation() != "" })
		reachlab.Echo(t, nb)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		sess, el, err := reachlab.Dial(ctx, na, nb)
		if err == nil {
			err = reachlab.RoundTrip(ctx, sess, 64<<10)
		}
		cancel()
		switch {
		case err != nil:
			t.Errorf("dial %d (%s -> %s): %v", k, from.Name(), to.Name(), err)
		case sess.Strategy() != want:
			t.Errorf("dial %d (%s -> %s): %s to %s after %v, want %s", k, from.Name(), to.Name(), sess.Strategy(), sess.RemoteAddr(), el, want)
		default:
			t.Logf("dial %d (%s -> %s): %s to %s in %v", k, from.Name(), to.Name(), sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond))
		}
		na.Close()
		nb.Close()
	}
}
