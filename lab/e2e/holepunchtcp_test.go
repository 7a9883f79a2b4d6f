package e2e_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/stream"
)

// TestLabHolepunchTCP: a peer behind a firewall that drops UDP and lets
// TCP out (udp-blocked-tcp-open) connects over TCP, never the relay the
// scenario also runs, to peers behind port-restricted and full-cone NATs,
// behind a double NAT (a home NAT behind a carrier's: the listener's
// primer must get past both), behind the same kind of firewall
// (holepunch-tcp: a TCP simultaneous open
// from both listening ports), and to a public peer (direct-tcp), in both
// firewall variants (linux-host sites behind ISP hops, as in
// TestLabLinuxHost), fresh nodes each dial, half the dials from each side,
// 64 KiB echoed intact. Three topologies: no delay anywhere, the server
// far away (60 ms each way on its link), and the matrix's main variant
// (20 ms one way on every site's access link, so that the ISP hop that
// answers a linux-host site's primer is as far away as the server, and
// the home sites' primers meet the peer's router after the peer's SYN
// left). Afterwards no host has a TCP connection left in SYN-SENT (the
// punch's losing sockets are closed).
// REACH_LAB_DIALS sets the dials per pair (5; 20 for the figures in
// docs/architecture.md).
func TestLabHolepunchTCP(t *testing.T) {
	blocked := natlab.Kind(natlab.UDPBlockedTCPOpen)
	for _, topo := range []struct {
		name      string
		serverRTT time.Duration
		access    time.Duration // one way, on every site's access link
	}{{"zero-delay", 0, 0}, {"far-server", 120 * time.Millisecond, 0}, {"access-20ms", 0, 20 * time.Millisecond}} {
		t.Run(topo.name, func(t *testing.T) {
			s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
			if topo.serverRTT > 0 {
				ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
				defer cancel()
				if err := s.Srv.Impair(ctx, natlab.Impairment{Delay: topo.serverRTT / 2}); err != nil {
					t.Fatal(err)
				}
			}
			n := dialsPerPair()
			var table []string
			for _, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
				isp := fw == natlab.LinuxHost
				for i, other := range []natlab.Kind{natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.FullCone), blocked, natlab.Open, natlab.KindDouble} {
					name := fmt.Sprintf("%s/%s<->%s", fw, blocked, other)
					want := reach.StrategyHolepunchTCP
					if other == natlab.Open {
						want = reach.StrategyDirectTCP
					}
					t.Run(name, func(t *testing.T) {
						a := s.SiteWith(t, fmt.Sprintf("u%s%da", fw[:1], i), natlab.SiteConfig{Kind: blocked, Firewall: fw, ISP: isp})
						b := s.SiteWith(t, fmt.Sprintf("u%s%db", fw[:1], i), natlab.SiteConfig{Kind: other, Firewall: fw, ISP: isp && other != natlab.Open})
						if topo.access > 0 {
							for _, site := range []*natlab.Site{a, b} {
								link := site.Host
								if site.Router != nil {
									link = &site.Router.Host
								}
								ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
								err := link.Impair(ctx, natlab.Impairment{Delay: topo.access})
								cancel()
								if err != nil {
									t.Fatal(err)
								}
							}
						}
						ok, worst := punchCell(t, s, a.Host, b.Host, n, want)
						line := fmt.Sprintf("%-50s %d/%d %s, slowest %v", name, ok, n, want, worst.Round(time.Millisecond))
						table = append(table, line)
						t.Log(line)
					})
				}
			}
			t.Logf("%s:\n%s", topo.name, strings.Join(table, "\n"))
		})
	}
}

// punchCell dials n times between a and b with fresh nodes, half from
// each side, each dial wanting strategy want over TCP and 64 KiB echoed;
// afterwards neither host has a connection left in SYN-SENT. It returns
// how many dials were as wanted and the slowest dial.
func punchCell(t *testing.T, s *reachlab.Scenario, a, b *natlab.Host, n int, want string) (int, time.Duration) {
	ok := 0
	var worst time.Duration
	for k := range n {
		from, to := a, b
		if k%2 == 1 {
			from, to = to, from
		}
		sess, el, done, err := freshTCPDial(t, s, from, to)
		switch {
		case err != nil:
			t.Errorf("dial %d (%s -> %s): %v", k, from.Name(), to.Name(), err)
		case sess.Strategy() != want || sess.Transport() != stream.TransportTCP:
			t.Errorf("dial %d (%s -> %s): %s over %s after %v, want %s over tcp", k, from.Name(), to.Name(), sess.Strategy(), sess.Transport(), el, want)
		default:
			ok++
			t.Logf("dial %d (%s -> %s): %s to %s in %v", k, from.Name(), to.Name(), sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond))
		}
		worst = max(worst, el)
		done()
	}
	for _, h := range []*natlab.Host{a, b} {
		noSynSent(t, h)
	}
	return ok, worst
}

// freshTCPDial starts fresh nodes on from and to (which echoes), dials
// once and echoes 64 KiB. done closes both nodes.
func freshTCPDial(t *testing.T, s *reachlab.Scenario, from, to *natlab.Host) (*reach.Session, time.Duration, func(), error) {
	cfg := reach.Config{DisablePortMapping: true}
	if os.Getenv("REACH_TCP_NO_PRIMER") != "" {
		cfg.TCPPunchLimits.PrimerTTL = -1
	}
	na := s.Node(t, from, cfg)
	nb := s.Node(t, to, cfg)
	reachlab.Echo(t, nb)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sess, el, err := reachlab.Dial(ctx, na, nb)
	if err == nil {
		err = reachlab.RoundTrip(ctx, sess, 64<<10)
	}
	return sess, el, func() { na.Close(); nb.Close() }, err
}

// noSynSent waits until h has no TCP connection in SYN-SENT.
func noSynSent(t *testing.T, h *natlab.Host) {
	t.Helper()
	reachlab.MustWaitFor(t, 5*time.Second, "no TCP connection in SYN-SENT on "+h.Name(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out, err := h.Exec(ctx, "ss", "-Htn", "state", "syn-sent")
		if err != nil {
			t.Fatalf("ss on %s: %v", h.Name(), err)
		}
		if out = strings.TrimSpace(out); out != "" {
			t.Logf("%s: SYN-SENT: %s", h.Name(), out)
			return false
		}
		return true
	})
}
