package e2e_test

import (
	"context"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// moveBytes is what TestLabMoveRelayDirect streams (REACH_MOVE_MIB
// overrides it; the figure is 1024).
func moveBytes() int64 {
	if n, err := strconv.Atoi(os.Getenv("REACH_MOVE_MIB")); err == nil && n > 0 {
		return int64(n) << 20
	}
	return 256 << 20
}

// moveRate bounds TestLabMoveRelayDirect's sender (bytes a second): below
// the relay's speed here, and far below the direct path's.
const moveRate = 16 << 20

// TestLabMoveRelayDirect: two peers behind port-restricted NATs whose
// direct path is cut (a firewall rule on one router) connect through the
// relay. One stream starts; the rule goes after 3 s, and the session
// moves to the direct path within 5 s, with the stream running. The rule
// comes back: the session falls back to the relay within 5 s, and moves
// to direct again when the rule goes. The stream's bytes arrive intact
// (SHA-256), and after the move back the rest goes direct.
//
// Twice: with a server that relays no first flights, the session is born
// on the relay; with first flights (the default), it is born on the
// hole-punched path on the server's word and moves to the relay when
// nothing comes straight from the peer, then on as above.
func TestLabMoveRelayDirect(t *testing.T) {
	for _, born := range []string{reach.StrategyRelay, reach.StrategyHolepunch} {
		t.Run("born-"+born, func(t *testing.T) { testMoveRelayDirect(t, born) })
	}
}

func testMoveRelayDirect(t *testing.T, born string) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true, DisableFlights: born == reach.StrategyRelay})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	cut, mend := cutter(t, ctx, sa, sb)
	cut()
	ev := newEvents()
	cfg := reach.Config{DisablePortMapping: true}
	cfgA := cfg
	cfgA.OnPathEvent = ev.add
	na := s.Node(t, sa.Host, cfgA)
	nb := s.Node(t, sb.Host, cfg)

	size := moveBytes()
	x := receiveOn(t, ctx, nb, size)
	if born == reach.StrategyHolepunch {
		reachlab.MustWaitFor(t, 10*time.Second, "both mappings measured", func() bool {
			return na.Mapping() == "independent" && nb.Mapping() == "independent"
		})
	}

	c, err := na.Dial(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	sess := c.Session()
	if born == reach.StrategyHolepunch {
		// Both NATs keep one mapping per socket: once both nodes know
		// it, the dial flies first.
		if got := sess.Strategy(); got != reach.StrategyHolepunch {
			t.Fatalf("first flight with the direct path cut: strategy %q, want holepunch (then the relay)", got)
		}
		if e := ev.wait(t, reach.PathMoved, 5*time.Second); e.Strategy != reach.StrategyRelay || e.Err == nil {
			t.Fatalf("first flight with the direct path cut: %+v, want a move to the relay", e)
		}
	} else {
		if sess.Strategy() != reach.StrategyRelay {
			t.Fatalf("with the direct path cut: strategy %q, want relay", sess.Strategy())
		}
		ev.wait(t, reach.PathRelayed, time.Second)
	}
	if sess.Strategy() != reach.StrategyRelay {
		t.Fatalf("strategy %q, want relay", sess.Strategy())
	}
	x.send(c, 13)

	relayBytes := func() uint64 { return s.Relay.Stats().Bytes }

	time.Sleep(3 * time.Second)
	atRelay := x.received.Load()
	mend()
	e := movedTo(t, ev, x, 5*time.Second, reach.StrategyHolepunch)
	if !e.Path.IsValid() || sess.Strategy() != reach.StrategyHolepunch {
		t.Fatalf("after the move: path %v, strategy %q", e.Path, sess.Strategy())
	}
	relayAtMove := relayBytes()
	reachlab.MustWaitFor(t, 30*time.Second, "8 MiB more over the direct path", func() bool { return x.received.Load() > atRelay+8<<20 })

	cut()
	movedTo(t, ev, x, 5*time.Second, reach.StrategyRelay)
	reachlab.MustWaitFor(t, 30*time.Second, "bytes over the relay again", func() bool { return relayBytes() > relayAtMove+1<<20 })
	mend()
	movedTo(t, ev, x, 10*time.Second, reach.StrategyHolepunch)
	relayAtLast, receivedAtLast := relayBytes(), x.received.Load()

	x.check(t, ctx)
	// What the relay carries depends on its speed: after each outage of
	// the direct path (3 s until the fallback) the stream's backlog drains
	// over it, at full speed since the relay forwards data packets. What
	// must hold is that once back on the direct path, the session stays
	// there: the rest of the stream goes direct.
	after, rest := relayBytes()-relayAtLast, uint64(int64(size)-receivedAtLast)
	t.Logf("%d MiB intact; the relay carried %d MiB in all, %d KiB of the last %d MiB", size>>20, relayBytes()>>20, after>>10, rest>>20)
	if after > rest/10+1<<20 {
		t.Errorf("the relay carried %d of the last %d bytes, after the move back: the session did not stay on the direct path", after, rest)
	}
}

type counter struct{ n *atomic.Int64 }

func (c counter) Write(b []byte) (int, error) { c.n.Add(int64(len(b))); return len(b), nil }

// TestLabMoveDirectRelay: a session born on the hole-punched path keeps
// its stream when the path is cut: it falls back to the relay within 5 s
// and returns to the direct path within 5 s of the cut's end; the bytes
// arrive intact.
func TestLabMoveDirectRelay(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	ev := newEvents()
	cfg := reach.Config{DisablePortMapping: true}
	cfgA := cfg
	cfgA.OnPathEvent = ev.add
	na := s.Node(t, sa.Host, cfgA)
	nb := s.Node(t, sb.Host, cfg)

	const size int64 = 128 << 20
	x := receiveOn(t, ctx, nb, size)
	c, err := na.Dial(ctx, nb.ID())
	if err != nil {
		t.Fatal(err)
	}
	sess := c.Session()
	if sess.Strategy() != reach.StrategyHolepunch {
		t.Fatalf("strategy %q, want holepunch", sess.Strategy())
	}
	born := sess.RemoteAddr()
	x.send(c, 17)
	reachlab.MustWaitFor(t, 30*time.Second, "16 MiB over the direct path", func() bool { return x.received.Load() > 16<<20 })
	if err := sa.Router.Block(ctx, sb.Router.WAN()); err != nil {
		t.Fatal(err)
	}
	movedTo(t, ev, x, 5*time.Second, reach.StrategyRelay)
	if sess.Strategy() != reach.StrategyRelay || sess.RemoteAddr().IsValid() {
		t.Fatalf("after the cut: strategy %q, path %v", sess.Strategy(), sess.RemoteAddr())
	}
	atCut := x.received.Load()
	reachlab.MustWaitFor(t, 30*time.Second, "4 MiB over the relay", func() bool { return x.received.Load() > atCut+4<<20 })
	if err := sa.Router.Unblock(ctx); err != nil {
		t.Fatal(err)
	}
	movedTo(t, ev, x, 5*time.Second, reach.StrategyHolepunch)
	if sess.RemoteAddr() != born {
		t.Logf("back on %v (born on %v)", sess.RemoteAddr(), born)
	}
	x.check(t, ctx)
	t.Logf("%d MiB intact; the relay carried %d MiB", size>>20, s.Relay.Stats().Bytes>>20)
}

// TestLabMoveRenumber: a host's LAN address changes mid-transfer (the
// dialler's, then in a fresh pair the listener's): its router gives it a
// new mapping, so the peer sees it at a new address. The session and its
// stream survive, the bytes arrive intact, and the session is on a direct
// path again at the end.
func TestLabMoveRenumber(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	for _, who := range []string{"dialler", "listener"} {
		t.Run(who, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
			ev := newEvents()
			cfg := reach.Config{DisablePortMapping: true, OnPathEvent: ev.add}
			na := s.Node(t, sa.Host, cfg)
			nb := s.Node(t, sb.Host, reach.Config{DisablePortMapping: true})
			const size int64 = 96 << 20
			x := receiveOn(t, ctx, nb, size)
			c, err := na.Dial(ctx, nb.ID())
			if err != nil {
				t.Fatal(err)
			}
			sess := c.Session()
			if sess.Strategy() != reach.StrategyHolepunch {
				t.Fatalf("strategy %q, want holepunch", sess.Strategy())
			}
			x.send(c, 23)
			reachlab.MustWaitFor(t, 30*time.Second, "16 MiB", func() bool { return x.received.Load() > 16<<20 })
			h := sa.Host
			if who == "listener" {
				h = sb.Host
			}
			before := sess.RemoteAddr()
			na4, err := h.Renumber(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s renumbered to %v at %d MiB (session on %v)", who, na4, x.received.Load()>>20, before)
			if os.Getenv("REACH_DEBUG_MOVE") != "" {
				for i := 0; i < 12; i++ {
					time.Sleep(time.Second)
					cs := sess.QUIC().ConnectionStats()
					t.Logf("t+%ds: %d MiB received; A sent %d lost %d recv %d; srtt %v", i+1, x.received.Load()>>20, cs.PacketsSent, cs.PacketsLost, cs.PacketsReceived, cs.SmoothedRTT)
					for _, bs := range nb.Sessions() {
						bc := bs.QUIC().ConnectionStats()
						t.Logf("      B session %v: sent %d lost %d recv %d", bs.QUICAddr(), bc.PacketsSent, bc.PacketsLost, bc.PacketsReceived)
					}
				}
			}
			x.check(t, ctx)
			reachlab.MustWaitFor(t, 20*time.Second, "a direct path again", func() bool {
				return sess.Strategy() == reach.StrategyHolepunch && sess.RemoteAddr().IsValid()
			})
			t.Logf("%d MiB intact; the session is on %s %v (was %v); relay carried %d MiB in all", size>>20, sess.Strategy(), sess.RemoteAddr(), before, s.Relay.Stats().Bytes>>20)
		})
	}
}

// TestLabMoveRenumberIdle: an idle session whose dialler is renumbered
// (its NAT then maps it anew, so the listener's direct path to it is
// dead) notices at once: the node watches its own addresses, checks its
// direct paths when they change and falls back to the relay within 4 s
// (an idle session sends nothing to find the path dead by: it took the
// next keepalive and three silent seconds, 10-13 s, before); the session
// then finds a direct path again and carries an echo intact.
func TestLabMoveRenumberIdle(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{Relay: true})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	ev := newEvents()
	na := s.Node(t, sa.Host, reach.Config{DisablePortMapping: true, OnPathEvent: ev.add})
	nb := s.Node(t, sb.Host, reach.Config{DisablePortMapping: true})
	reachlab.Echo(t, nb)
	sess, err := reachlab.CheckEcho(t, ctx, na, nb, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	if sess.Strategy() != reach.StrategyHolepunch || !sess.RemoteAddr().IsValid() {
		t.Fatalf("born on %s %v, want holepunch", sess.Strategy(), sess.RemoteAddr())
	}
	time.Sleep(2 * time.Second) // idle
	addr, err := sa.Host.Renumber(ctx)
	if err != nil {
		t.Fatal(err)
	}
	renumbered := time.Now()
	t.Logf("dialler renumbered to %v", addr)
	e := ev.wait(t, reach.PathMoved, 4*time.Second)
	if e.Strategy != reach.StrategyRelay {
		t.Fatalf("first move %+v, want the relay", e)
	}
	t.Logf("fell back to the relay %v after the renumbering", time.Since(renumbered).Round(time.Millisecond))
	reachlab.MustWaitFor(t, 20*time.Second, "a direct path again", func() bool {
		return sess.Strategy() == reach.StrategyHolepunch && sess.RemoteAddr().IsValid()
	})
	t.Logf("direct again %v after the renumbering, on %v", time.Since(renumbered).Round(time.Millisecond), sess.RemoteAddr())
	if err := reachlab.RoundTrip(ctx, sess, 1<<20); err != nil {
		t.Fatalf("echo after the move: %v", err)
	}
}
