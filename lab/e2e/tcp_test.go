package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
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
// scenario also runs, in every one of tcpDials fresh dials each way, with
// 256 KiB intact both ways each time: the blocked peer dials the public
// one's TCP listener; when the public one dials, the blocked one connects
// back to it (a reversal). Afterwards neither host has a TCP connection
// left but those to the server. Without delay, and with 20 ms one way on each
// access link (the matrix's main variant; the relay then joins the race
// 250 ms after the dial starts, since one side has no UDP). Each session
// ends on both sides before the next dial.
func TestLabDirectTCP(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	pub := s.Site(t, "tpub", natlab.Open)
	for j, delay := range []time.Duration{0, 20 * time.Millisecond} {
		if delay > 0 {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := pub.Host.Impair(ctx, natlab.Impairment{Delay: delay})
			cancel()
			if err != nil {
				t.Fatal(err)
			}
		}
		for i, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
			t.Run(fmt.Sprintf("%s/delay=%v", fw, delay), func(t *testing.T) {
				// A fresh public node: the server allows a peer ID 30
				// introductions at once (then 3 a second).
				np := s.Node(t, pub.Host, reach.Config{})
				reachlab.Echo(t, np)
				corp := s.SiteWith(t, fmt.Sprintf("tc%d%d", j, i), natlab.SiteConfig{Kind: natlab.Kind(natlab.UDPBlockedTCPOpen), Firewall: fw})
				if delay > 0 {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					err := corp.Router.Impair(ctx, natlab.Impairment{Delay: delay})
					cancel()
					if err != nil {
						t.Fatal(err)
					}
				}
				nc := s.Node(t, corp.Host, reach.Config{})
				reachlab.Echo(t, nc)
				if nc.Observed().IsValid() {
					t.Fatalf("the blocked node registered over UDP (observed %v)", nc.Observed())
				}
				dialTCP(t, "blocked -> open", nc, np)
				dialTCP(t, "open -> blocked", np, nc)
				// Nothing of the 40 dials is left on either host: no
				// connection to anyone but the server that is not
				// closed (TIME_WAIT aside), half-open ones included.
				srv := s.Srv.Addr().String()
				for _, h := range []*natlab.Host{corp.Host, pub.Host} {
					reachlab.MustWaitFor(t, 5*time.Second, "no TCP connection left on "+h.Name(), func() bool {
						ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
						defer cancel()
						out, err := h.Exec(ctx, "ss", "-Htn", "state", "connected", "exclude", "time-wait")
						if err != nil {
							t.Fatalf("ss on %s: %v", h.Name(), err)
						}
						var left []string
						for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
							if line != "" && !strings.Contains(line, srv+":") {
								left = append(left, line)
							}
						}
						if len(left) > 0 {
							t.Logf("%s: %d TCP connections left: %v", h.Name(), len(left), left)
						}
						return len(left) == 0
					})
				}
			})
		}
	}
}

// dialTCP dials tcpDials fresh sessions from one node to the other (which
// runs reachlab.Echo) and checks each: direct-tcp over tcp, 256 KiB intact
// both ways.
func dialTCP(t *testing.T, name string, from, to *reach.Node) {
	t.Helper()
	var times []time.Duration
	for d := range tcpDials {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		sess, el, err := reachlab.Dial(ctx, from, to)
		if err != nil {
			cancel()
			t.Fatalf("%s: dial %d: %v", name, d, err)
		}
		err = reachlab.RoundTrip(ctx, sess, 256<<10)
		cancel()
		if err != nil {
			t.Fatalf("%s: dial %d over %s: %v", name, d, sess.Strategy(), err)
		}
		if sess.Strategy() != reach.StrategyDirectTCP || sess.Transport() != stream.TransportTCP {
			t.Errorf("%s: dial %d: strategy %q over %s, want direct-tcp over tcp", name, d, sess.Strategy(), sess.Transport())
		}
		times = append(times, el)
		closeAndWaitGone(t, sess, from, to)
	}
	slices.Sort(times)
	t.Logf("%s: %d dials, time to session median %v, max %v", name, len(times),
		times[len(times)/2].Round(time.Millisecond), times[len(times)-1].Round(time.Millisecond))
}
