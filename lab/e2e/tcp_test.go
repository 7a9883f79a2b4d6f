package e2e_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

// tcpDials is how many fresh dials each direction of a TCP pair makes.
const tcpDials = 20

// TestLabDirectTCP: a peer behind a firewall that drops UDP and lets TCP
// out (udp-blocked-tcp-open, both firewall variants) and a public peer
// connect over direct-tcp (TLS+yamux over TCP), not the relay the
// scenario also runs, in every one of tcpDials fresh dials, with 256 KiB
// intact both ways each time; each session ends on both sides before the
// next dial.
func TestLabDirectTCP(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	pub := s.Site(t, "tpub", natlab.Open)
	np := s.Node(t, pub.Host, reach.Config{})
	reachlab.Echo(t, np)
	for i, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
		t.Run(string(fw), func(t *testing.T) {
			corp := s.SiteWith(t, []string{"tch", "tcl"}[i], natlab.SiteConfig{Kind: natlab.Kind(natlab.UDPBlockedTCPOpen), Firewall: fw})
			nc := s.Node(t, corp.Host, reach.Config{})
			if nc.Observed().IsValid() {
				t.Fatalf("the blocked node registered over UDP (observed %v)", nc.Observed())
			}
			var times []time.Duration
			for d := range tcpDials {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				sess, el, err := reachlab.Dial(ctx, nc, np)
				if err != nil {
					cancel()
					t.Fatalf("dial %d: %v", d, err)
				}
				err = reachlab.RoundTrip(ctx, sess, 256<<10)
				cancel()
				if err != nil {
					t.Fatalf("dial %d over %s: %v", d, sess.Strategy(), err)
				}
				if sess.Strategy() != reach.StrategyDirectTCP || sess.Transport() != stream.TransportTCP {
					t.Errorf("dial %d: strategy %q over %s, want direct-tcp over tcp", d, sess.Strategy(), sess.Transport())
				}
				times = append(times, el)
				closeAndWaitGone(t, sess, nc, np)
			}
			slices.Sort(times)
			t.Logf("%s -> open: %d dials, time to session median %v, max %v", corp.Kind, len(times),
				times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
		})
	}
}
