package e2e_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// TestLabBirthday: a peer behind a symmetric NAT with random ports and a
// peer behind a port-restricted or restricted cone connect directly
// through the birthday mode (holepunch: 256 mappings on the symmetric
// side, up to 700 probes from the other, internal/holepunch/birthday.go)
// on at least half the dials, each within 3 s, both ways (even dials from
// the symmetric side), fresh nodes each dial, 64 KiB echoed intact, in
// both firewall variants (linux-host sites behind ISP hops). The server
// runs the relay, and what does not hit lands there, which the test
// counts, within 3 s too: the relay waits for the probes
// (holepunch.Rung.Patience, at most rung.MaxPatience). The bar:
// >= 10/20 direct, each within 3 s; with the wait, 19/20 is usual.
// REACH_LAB_DIALS sets the dials per pair (5).
func TestLabBirthday(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	n := dialsPerPair()
	sym := natlab.Kind(natlab.Symmetric)
	var table []string
	for _, fw := range []natlab.Firewall{natlab.Home, natlab.LinuxHost} {
		isp := fw == natlab.LinuxHost
		for i, other := range []natlab.Kind{natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.RestrictedCone)} {
			name := fmt.Sprintf("%s/%s<->%s", fw, sym, other)
			t.Run(name, func(t *testing.T) {
				a := s.SiteWith(t, fmt.Sprintf("b%s%da", fw[:1], i), natlab.SiteConfig{Kind: sym, Firewall: fw, ISP: isp})
				b := s.SiteWith(t, fmt.Sprintf("b%s%db", fw[:1], i), natlab.SiteConfig{Kind: other, Firewall: fw, ISP: isp})
				direct, relayed := 0, 0
				var times []string
				var worst, worstRelay time.Duration
				for k := range n {
					sess, el, done, err := freshDial(t, s, a.Host, b.Host, k)
					switch {
					case err != nil:
						t.Errorf("dial %d: %v", k, err)
					case sess.Strategy() == reach.StrategyHolepunch:
						direct++
						worst = max(worst, el)
						times = append(times, el.Round(time.Millisecond).String())
						if !strings.HasPrefix(sess.StrategyDetail(), "birthday") && other == natlab.Kind(natlab.PortRestricted) {
							t.Errorf("dial %d: holepunch to a port-restricted cone without the birthday mode? detail %q", k, sess.StrategyDetail())
						}
						if el > 3*time.Second {
							t.Errorf("dial %d: direct after %v, want within 3s", k, el)
						}
						t.Logf("dial %d: %s to %s in %v: %s", k, sess.Strategy(), sess.RemoteAddr(), el.Round(time.Millisecond), sess.StrategyDetail())
					default:
						relayed++
						worstRelay = max(worstRelay, el)
						if el > 3*time.Second {
							t.Errorf("dial %d: %s after %v, want within 3s (the birthday's wait is capped at %v)", k, sess.Strategy(), el, rung.MaxPatience)
						}
						t.Logf("dial %d: %s in %v", k, sess.Strategy(), el.Round(time.Millisecond))
					}
					done()
				}
				line := fmt.Sprintf("%-40s %d/%d direct (birthday) [%s], slowest %v; %d forwarded, slowest %v", name, direct, n,
					strings.Join(times, " "), worst.Round(time.Millisecond), relayed, worstRelay.Round(time.Millisecond))
				table = append(table, line)
				t.Log(line)
				if 2*direct < n {
					t.Errorf("%s: fewer than half direct", line)
				}
			})
		}
	}
	// The control, and what it costs when it cannot help: with the
	// birthday mode off the port-restricted pair lands on the relay every
	// time (so the lab's NAT is what it claims), and its dials take what
	// the forwarded dials above take; two random symmetric NATs (no
	// birthday role: both sides' mappings vary) go to the relay.
	off := reach.Config{DisablePortMapping: true, PunchLimits: reach.PunchLimits{BirthdaySockets: -1}}
	for i, tc := range []struct {
		name  string
		fw    natlab.Firewall
		other natlab.Kind
		cfg   reach.Config
	}{
		{"home/no-birthday<->port-restricted", natlab.Home, natlab.Kind(natlab.PortRestricted), off},
		{"linux-host/no-birthday<->port-restricted", natlab.LinuxHost, natlab.Kind(natlab.PortRestricted), off},
		{"home/symmetric<->symmetric", natlab.Home, sym, reach.Config{DisablePortMapping: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			isp := tc.fw == natlab.LinuxHost
			a := s.SiteWith(t, fmt.Sprintf("bc%da", i), natlab.SiteConfig{Kind: sym, Firewall: tc.fw, ISP: isp})
			b := s.SiteWith(t, fmt.Sprintf("bc%db", i), natlab.SiteConfig{Kind: tc.other, Firewall: tc.fw, ISP: isp})
			counts := map[string]int{}
			var worst time.Duration
			for k := range n {
				from, to := a.Host, b.Host
				if k%2 == 1 {
					from, to = to, from
				}
				na, nb := s.Node(t, from, tc.cfg), s.Node(t, to, tc.cfg)
				reachlab.Echo(t, nb)
				reachlab.MustWaitFor(t, 10*time.Second, "the listener's mapping measured", func() bool { return nb.Mapping() != "" })
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				sess, el, err := reachlab.Dial(ctx, na, nb)
				if err == nil {
					err = reachlab.RoundTrip(ctx, sess, 64<<10)
				}
				cancel()
				if err != nil {
					t.Errorf("dial %d: %v", k, err)
				} else {
					counts[sess.Strategy()]++
					worst = max(worst, el)
					if sess.Strategy() == reach.StrategyHolepunch && tc.other == natlab.Kind(natlab.PortRestricted) {
						t.Errorf("dial %d: holepunch without the birthday mode (to %s): the lab's NAT is not what it claims", k, sess.RemoteAddr())
					}
				}
				na.Close()
				nb.Close()
			}
			line := fmt.Sprintf("%-40s %v of %d dials, slowest %v", tc.name, counts, n, worst.Round(time.Millisecond))
			table = append(table, line)
			t.Log(line)
		})
	}
	t.Log("\n" + strings.Join(table, "\n"))
}

// TestLabBirthdayOneSided: a dialler whose birthday mode is on, and whose
// NAT pairing would run it (a random symmetric NAT and a port-restricted
// cone, from either side), dials a listener whose mode is off: the
// listener's answer does not say "birthday", so the dialler does not hold
// the relay back for probes that never come. Its dials land on the relay
// as fast as those of a pair with the mode off on both sides (the
// control, dialled alternately on the same sites): median within 300 ms
// of it. Before, the dialler waited its Patience (~0.9 s on this path)
// whatever the listener did: ~0.5 s more than the control.
// REACH_LAB_DIALS sets the dials of each kind (5).
func TestLabBirthdayOneSided(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	n := dialsPerPair()
	a := s.SiteWith(t, "bosa", natlab.SiteConfig{Kind: natlab.Kind(natlab.Symmetric), Firewall: natlab.Home})
	b := s.SiteWith(t, "bosb", natlab.SiteConfig{Kind: natlab.Kind(natlab.PortRestricted), Firewall: natlab.Home})
	on := reach.Config{DisablePortMapping: true}
	off := reach.Config{DisablePortMapping: true, PunchLimits: reach.PunchLimits{BirthdaySockets: -1}}
	var oneSided, control []time.Duration
	for k := range 2 * n {
		from, to := a.Host, b.Host
		if k/2%2 == 1 {
			from, to = to, from // the dialler probes, the listener would be wide
		}
		dcfg := on
		if k%2 == 1 {
			dcfg = off
		}
		na, nb := s.Node(t, from, dcfg), s.Node(t, to, off)
		reachlab.Echo(t, nb)
		reachlab.MustWaitFor(t, 10*time.Second, "the listener's mapping measured", func() bool { return nb.Mapping() != "" })
		reachlab.MustWaitFor(t, 10*time.Second, "the dialler's mapping measured", func() bool { return na.Mapping() != "" })
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		sess, el, err := reachlab.Dial(ctx, na, nb)
		if err == nil {
			err = reachlab.RoundTrip(ctx, sess, 64<<10)
		}
		cancel()
		switch {
		case err != nil:
			t.Errorf("dial %d: %v", k, err)
		case sess.Strategy() != reach.StrategyRelay:
			t.Errorf("dial %d: %s, want relay (the listener's birthday mode is off)", k, sess.Strategy())
		case k%2 == 0:
			oneSided = append(oneSided, el)
		default:
			control = append(control, el)
		}
		t.Logf("dial %d (dialler's mode on: %v): %v", k, k%2 == 0, el.Round(time.Millisecond))
		na.Close()
		nb.Close()
	}
	if len(oneSided) == 0 || len(control) == 0 {
		t.Fatal("no dial to compare")
	}
	median := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	mo, mc := median(oneSided), median(control)
	t.Logf("relayed: dialler's mode on, listener's off: median %v %v; both off: median %v %v", mo.Round(time.Millisecond), oneSided, mc.Round(time.Millisecond), control)
	if mo > mc+300*time.Millisecond {
		t.Errorf("a dialler whose listener runs no birthday waits for it: median %v, control %v", mo, mc)
	}
}
