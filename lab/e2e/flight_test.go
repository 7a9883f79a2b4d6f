package e2e_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
	"github.com/reachp2p/reach/rendezvous"
	"github.com/reachp2p/reach/stream"
)

// TestLabFirstFlight: a hole-punched dial's QUIC handshake starts with
// the introduction: its first flight goes to the listener through the
// server and the listener's answer comes back the same way (a few packets
// each way, never more than rendezvous.MaxFlightPackets), and the session
// runs on the punched path, intact, both behind linux-host routers (which
// keep state for any packet that reaches them first) and home routers.
// Against a server that relays no flights (older, or turned off) the same
// dials still go direct. A dial whose first packet goes straight after
// all (the early dial's goroutine wrote it only after the listener's
// answer was in, seen on a busy CI machine) is made again, twice at most
// per site pair. The server runs the relay: a node flies first
// only when it has the relay to fall back to.
func TestLabFirstFlight(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  bool
	}{{"flights", false}, {"server-without-flights", true}} {
		t.Run(tc.name, func(t *testing.T) {
			s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true, DisableFlights: tc.off})
			for i, fw := range []natlab.Firewall{natlab.LinuxHost, natlab.Home} {
				t.Run(string(fw), func(t *testing.T) {
					pr := natlab.Kind(natlab.PortRestricted)
					a := s.SiteWith(t, fmt.Sprintf("f%da", i), natlab.SiteConfig{Kind: pr, Firewall: fw, ISP: true})
					b := s.SiteWith(t, fmt.Sprintf("f%db", i), natlab.SiteConfig{Kind: pr, Firewall: fw, ISP: true})
					grounded := 0 // dials whose first packet went straight
					for k := 0; k < 3; k++ {
						na := s.Node(t, a.Host, reach.Config{})
						nb := s.Node(t, b.Host, reach.Config{})
						reachlab.Echo(t, nb)
						// Both must know their mapping, or neither flies first.
						reachlab.MustWaitFor(t, 10*time.Second, "both mappings measured", func() bool {
							return na.Mapping() == "independent" && nb.Mapping() == "independent"
						})
						before := s.Server.Stats()
						ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
						sess, err := reachlab.CheckEcho(t, ctx, na, nb, 1<<20)
						cancel()
						if err != nil {
							t.Fatalf("dial %d: %v", k, err)
						}
						if got := sess.Strategy(); got != reach.StrategyHolepunch {
							t.Fatalf("dial %d: strategy %s, want holepunch", k, got)
						}
						if ip := sess.RemoteAddr(); !ip.IsValid() || ip.Addr() == s.Srv.Addr() {
							t.Fatalf("dial %d: session path %v, want the listener's public address", k, ip)
						}
						after := s.Server.Stats()
						relayed := after.FlightPackets - before.FlightPackets
						switch {
						case tc.off && relayed != 0:
							t.Fatalf("dial %d: a server without flights relayed %d packets", k, relayed)
						case !tc.off && relayed == 0 && grounded < 2:
							// The early dial's first packet was written
							// after the listener's answer was in (its
							// goroutine ran late on a busy machine), so
							// it went straight to the listener: a
							// direct session, no flight. Not what this
							// dial is for: again with fresh nodes.
							grounded++
							t.Logf("dial %d: no flight packet relayed (the first went straight); again with fresh nodes", k)
							na.Close()
							nb.Close()
							k--
							continue
						case !tc.off && (relayed < 2 || relayed > 2*rendezvous.MaxFlightPackets):
							t.Fatalf("dial %d: the server relayed %d flight packets, want 2..%d", k, relayed, 2*rendezvous.MaxFlightPackets)
						}
						t.Logf("dial %d: %d flight packets relayed, %d dropped", k, relayed, after.FlightDropped-before.FlightDropped)
						// The listener's side of the session runs on the
						// punched path too (its strategy is not a
						// forwarding one, and its path is an address).
						reachlab.MustWaitFor(t, 5*time.Second, "the listener's session on a direct path", func() bool {
							for _, ls := range nb.Sessions() {
								if ls.RemotePeer() == na.ID() && ls.RemoteAddr().IsValid() && ls.RemoteAddr().Addr() != s.Srv.Addr() &&
									ls.Strategy() != reach.StrategyRelay {
									return true
								}
							}
							return false
						})
						na.Close()
						nb.Close()
					}
				})
			}
		})
	}
}

// TestLabFirstFlightFirewall: a first flight between two NATs that keep
// one mapping per socket (so both sides fly first) when a firewall drops
// everything between the two sites: the session wins on the server's
// word, nothing ever comes straight from the listener, and the session
// moves to the relay (make before break) with no byte lost, within a
// second of the handshake; the listener's side runs on the relay too.
func TestLabFirstFlightFirewall(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pr := natlab.Kind(natlab.PortRestricted)
	for i, fw := range []natlab.Firewall{natlab.LinuxHost, natlab.Home} {
		t.Run(string(fw), func(t *testing.T) {
			a := s.SiteWith(t, fmt.Sprintf("w%da", i), natlab.SiteConfig{Kind: pr, Firewall: fw})
			b := s.SiteWith(t, fmt.Sprintf("w%db", i), natlab.SiteConfig{Kind: pr, Firewall: fw})
			if err := a.Router.Block(ctx, b.Router.WAN()); err != nil {
				t.Fatal(err)
			}
			var (
				ev     *events
				na, nb *reach.Node
				sess   *stream.Session
				took   time.Duration
			)
			// A dial that does not fly first (seen in 1 of 3 full CI runs
			// on 2026-11-30, never alone; cause not found, see issue 13's
			// notes) is tried again with fresh nodes, at most twice, and
			// logged: what is tested is the move after a first flight.
			for try := 1; ; try++ {
				ev = newEvents()
				// The relay rung joins the race late, so that the first
				// flight's handshake wins first even when the machine is
				// starved (a CI run beside a load loop once took over the
				// 0.4 s it has by default): what is tested is its move to
				// the relay afterwards, not the race.
				na = s.Node(t, a.Host, reach.Config{DisablePortMapping: true, OnPathEvent: ev.add, RelayDelay: 3 * time.Second})
				nb = s.Node(t, b.Host, reach.Config{DisablePortMapping: true})
				reachlab.Echo(t, nb)
				// Both must know their mapping, or neither flies first.
				reachlab.MustWaitFor(t, 10*time.Second, "both mappings measured", func() bool {
					return na.Mapping() == "independent" && nb.Mapping() == "independent"
				})
				before := s.Server.Stats()
				start := time.Now()
				dctx, dcancel := context.WithTimeout(ctx, 20*time.Second)
				var err error
				sess, err = reachlab.CheckEcho(t, dctx, na, nb, 1<<20)
				dcancel()
				if err != nil {
					t.Fatal(err)
				}
				took = time.Since(start)
				relayed := s.Server.Stats().FlightPackets - before.FlightPackets
				if relayed >= 2 {
					break
				}
				if try == 3 {
					t.Fatalf("the server relayed %d flight packets: the dial did not fly first, %d times", relayed, try)
				}
				t.Logf("try %d: the server relayed %d flight packets: the dial did not fly first; again with fresh nodes", try, relayed)
				na.Close()
				nb.Close()
			}
			moved := ev.wait(t, reach.PathMoved, 5*time.Second)
			if moved.Strategy != reach.StrategyRelay || moved.Err == nil {
				t.Fatalf("path event %+v, want a move to the relay with a reason", moved)
			}
			if got := sess.Strategy(); got != reach.StrategyRelay || sess.RemoteAddr().IsValid() {
				t.Fatalf("session on %s (%v), want the relay", got, sess.RemoteAddr())
			}
			reachlab.MustWaitFor(t, 5*time.Second, "the listener's session on the relay", func() bool {
				for _, ls := range nb.Sessions() {
					if ls.RemotePeer() == na.ID() && ls.Strategy() == reach.StrategyRelay {
						return true
					}
				}
				return false
			})
			t.Logf("dial, move to the relay and 1 MiB echoed: %v", took.Round(time.Millisecond))
		})
	}
}
