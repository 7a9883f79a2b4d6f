package e2e_test

// Robustness in the NAT lab: losers of the strategy race leave nothing
// behind, nodes behind NATs fail over between servers, and forged punch
// packets from the internet cannot steer a session.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach"
	"github.com/reachp2p/reach/internal/holepunch"
	"github.com/reachp2p/reach/lab/natlab"
	"github.com/reachp2p/reach/lab/reachlab"
)

// loserFrames are stack frames of code that runs only inside a race.
var loserFrames = []string{"reach/direct.", "reach/holepunch.(*Strategy)", "reach/stream.Dial("}

// TestLabRaceLeak: two peers behind different port-restricted NATs. direct
// dials the listener's LAN address (unreachable) while holepunch wins.
// When DialSession returns no goroutine runs loser code, the listener ends
// up with exactly one session to the dialler, and once both nodes close
// nothing they started is left running.
func TestLabRaceLeak(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	ignore := goleak.IgnoreCurrent()

	tap, log := newLogTap(t, sa.Host.Name())
	a := s.Node(t, sa.Host, reach.Config{Logger: log})
	b := s.Node(t, sb.Host, reach.Config{})
	dctx, dcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer dcancel()
	sess, err := a.DialSession(dctx, b.ID())
	if err != nil {
		t.Fatal(err)
	}
	// (a) Race returned only after every loser did.
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(stacks, "\n\n") {
		for _, f := range loserFrames {
			if strings.Contains(g, f) {
				t.Errorf("goroutine still in %s after DialSession returned:\n%s", f, g)
			}
		}
	}
	if sess.Strategy() != reach.StrategyHolepunch {
		t.Fatalf("strategy %s, want holepunch", sess.Strategy())
	}
	if len(tap.lines(`msg="strategy: start"`, "strategy=direct")) == 0 {
		t.Fatal("direct never started: the race had no loser")
	}
	if len(tap.lines(`msg="strategy: failed"`, "strategy=direct", "context canceled")) == 0 {
		t.Error("direct did not end cancelled by holepunch's win")
	}

	// (b) One session each way, and it carries data.
	reachlab.Echo(t, b)
	if err := reachlab.RoundTrip(dctx, sess, 64<<10); err != nil {
		t.Fatal(err)
	}
	reachlab.WaitFor(2*time.Second, func() bool { return sessionsTo(b, a.ID()) == 1 })
	if na, nb := sessionsTo(a, b.ID()), sessionsTo(b, a.ID()); na != 1 || nb != 1 {
		t.Errorf("sessions a->b %d, b->a %d; want exactly 1 each", na, nb)
	}

	// (c) Nothing the nodes started outlives them.
	a.Close()
	b.Close()
	if err := goleak.Find(ignore); err != nil {
		t.Errorf("goroutines left after closing both nodes: %v", err)
	}
}

// TestLabFailover: two servers on the internet, two peers behind
// port-restricted NATs configured with both. The first server dies; both
// peers move to the second and make a fresh hole-punched session through
// it.
func TestLabFailover(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{}) // server 1
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	h2, err := s.AddPublicHost(ctx, "srv2")
	if err != nil {
		t.Fatal(err)
	}
	rs1, cs1 := s.Server, s.ConnectString()
	rs2, cs2 := reachlab.StartServer(t, h2)
	sa, sb := s.Pair(t, natlab.Kind(natlab.PortRestricted), natlab.Kind(natlab.PortRestricted))
	cfg := reach.Config{Servers: []string{cs1, cs2}}
	a := s.Node(t, sa.Host, cfg)
	b := s.Node(t, sb.Host, cfg)
	reachlab.Echo(t, b)
	if a.Server() != cs1 || b.Server() != cs1 {
		t.Fatalf("nodes on %q and %q, want the first server", a.Server(), b.Server())
	}
	checkEcho(t, ctx, a, b, 256<<10).Close()

	rs1.Close()
	killed := time.Now()
	reachlab.MustWaitFor(t, 5*time.Second, "both nodes on server 2", func() bool { return a.Server() == cs2 && b.Server() == cs2 })
	t.Logf("failed over in %v", time.Since(killed))
	reachlab.MustWaitFor(t, 2*time.Second, "old session gone", func() bool { return sessionsTo(a, b.ID())+sessionsTo(b, a.ID()) == 0 })
	start := time.Now()
	sess := checkEcho(t, ctx, a, b, 256<<10)
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("fresh dial after failover took %v, want under 3s", el)
	}
	if sess.Strategy() != reach.StrategyHolepunch {
		t.Errorf("strategy %s, want holepunch", sess.Strategy())
	}
	if got := rs2.Stats().Introductions; got != 1 {
		t.Errorf("server 2 made %d introductions, want 1", got)
	}
}

// forgePunch builds a well-formed punch packet MAC'd under key (layout in
// holepunch/packet.go).
func forgePunch(key []byte, typ, role byte, attempt, txid uint64, observed netip.AddrPort) []byte {
	b := make([]byte, holepunch.PacketLen)
	b[0], b[1], b[2], b[3] = holepunch.Magic, holepunch.Version, typ, role
	binary.BigEndian.PutUint64(b[4:], attempt)
	binary.BigEndian.PutUint64(b[12:], txid)
	a := observed.Addr().As16()
	copy(b[20:36], a[:])
	binary.BigEndian.PutUint16(b[36:], observed.Port())
	h := hmac.New(sha256.New, key)
	h.Write(b[:38])
	copy(b[38:], h.Sum(nil)[:16])
	return b
}

// TestLabSpoofedPunch: the dialler sits behind a full-cone NAT, so anyone
// on the internet can send to its public address. An attacker that
// watches the punch on the path (a raw socket at the listener's host
// stands in for an on-path observer: it sees the dialler's checks arrive,
// so it learns the attempt ID but not the key) floods the dialler with
// pings and pongs for that attempt under a wrong key, plus guessed
// attempts, while the punch runs (the listener's link is slowed, so the
// dialler's checks are seen a round trip before its session is up). The
// packets reach the MAC check and are dropped; the session goes to the
// real peer at its NAT address.
func TestLabSpoofedPunch(t *testing.T) {
	s := reachlab.NewScenario(t, reachlab.ServerConfig{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	evil, err := s.AddPublicHost(ctx, "evil")
	if err != nil {
		t.Fatal(err)
	}
	sa := s.Site(t, "sfc", natlab.Kind(natlab.FullCone))
	sb := s.Site(t, "spr", natlab.Kind(natlab.PortRestricted))
	if err := sb.Host.Impair(ctx, natlab.Impairment{Delay: 150 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	tap, log := newLogTap(t, "sfc")
	a := s.Node(t, sa.Host, reach.Config{Logger: log})
	b := s.Node(t, sb.Host, reach.Config{})
	reachlab.Echo(t, b)
	target := a.Observed()
	if !target.IsValid() {
		t.Fatal("dialler has no reflexive address")
	}

	// The observer: every UDP datagram reaching the listener's host.
	var raw net.PacketConn
	if err := sb.Host.Run(func() (err error) { raw, err = net.ListenPacket("ip4:udp", "0.0.0.0"); return }); err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	atk, err := evil.ListenUDP(netip.AddrPortFrom(evil.Addr(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer atk.Close()
	evilAddr := netip.AddrPortFrom(evil.Addr(), uint16(atk.LocalAddr().(*net.UDPAddr).Port))

	attempts := make(chan uint64, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { // observer
		buf := make([]byte, 2048)
		for {
			raw.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, from, err := raw.ReadFrom(buf)
			select {
			case <-stop:
				return
			default:
			}
			if err != nil || from.(*net.IPAddr).IP.Equal(evil.Addr().AsSlice()) {
				continue // not the attacker's own packets
			}
			p := buf[:n]
			if len(p) == 8+holepunch.PacketLen && p[8] == holepunch.Magic && p[8+3] == holepunch.RoleDialer {
				attempts <- binary.BigEndian.Uint64(p[8+4:])
				return
			}
		}
	})
	var pinged int
	wg.Go(func() { // the attacker answers any ping the dialler sends it
		buf := make([]byte, 2048)
		for {
			atk.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
			n, from, err := atk.ReadFromUDPAddrPort(buf)
			select {
			case <-stop:
				return
			default:
			}
			if err != nil || n != holepunch.PacketLen || buf[0] != holepunch.Magic {
				continue
			}
			pinged++
			at, txid := binary.BigEndian.Uint64(buf[4:]), binary.BigEndian.Uint64(buf[12:])
			atk.WriteToUDPAddrPort(forgePunch(make([]byte, holepunch.KeyLen), 2, holepunch.RoleListener, at, txid, from), from)
		}
	})
	var forged int
	wg.Go(func() { // attacker
		var known []uint64
		wrong := make([]byte, holepunch.KeyLen)
		rand.Read(wrong)
		for {
			select {
			case <-stop:
				return
			case at := <-attempts:
				known = append(known, at)
			case <-time.After(5 * time.Millisecond):
			}
			var rb [8]byte
			rand.Read(rb[:])
			guess := binary.BigEndian.Uint64(rb[:]) | 1
			for _, at := range append(known, guess) {
				for _, role := range []byte{holepunch.RoleListener, holepunch.RoleDialer} {
					rand.Read(rb[:])
					txid := binary.BigEndian.Uint64(rb[:])
					for _, pk := range [][]byte{
						forgePunch(wrong, 1, role, at, txid, netip.AddrPort{}),
						forgePunch(wrong, 2, role, at, txid, evilAddr),
					} {
						if _, err := atk.WriteToUDPAddrPort(pk, target); err == nil && at != guess {
							forged++
						}
					}
				}
			}
		}
	})

	dctx, dcancel := context.WithTimeout(ctx, 15*time.Second)
	defer dcancel()
	sess, err := a.DialSession(dctx, b.ID())
	// Keep forging for a moment after the session is up (the point is
	// packets that arrive late), then stop.
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	dropped := tap.lines(`msg="holepunch: dropped packet"`, "from="+evilAddr.String())
	t.Logf("%d forged packets for the observed attempt sent; %d reached the MAC check; session %s via %s", forged, len(dropped), sess.RemoteAddr(), sess.Strategy())
	if forged == 0 {
		t.Fatal("the observer never saw the attempt: nothing was tested")
	}
	if pinged != 0 {
		t.Errorf("the dialler sent %d punch packets to the attacker: it took a forged ping for the peer's", pinged)
	}
	if len(dropped) == 0 {
		t.Error("no forged packet reached the dialler's punch attempt while it ran")
	}
	for _, d := range dropped {
		if !strings.Contains(d, "MAC") {
			t.Errorf("forged packet dropped for another reason: %s", d)
		}
	}
	if sess.RemotePeer() != b.ID() {
		t.Errorf("session with %s, want %s", sess.RemotePeer().Short(), b.ID().Short())
	}
	if got, want := sess.RemoteAddr(), b.Observed(); got != want || got.Addr() == evil.Addr() {
		t.Errorf("session path %v, want the listener's NAT address %v (attacker at %v)", got, want, evilAddr)
	}
	if n := len(a.Sessions()); n != 1 {
		t.Errorf("dialler has %d sessions, want 1", n)
	}
	if err := reachlab.RoundTrip(dctx, sess, 256<<10); err != nil {
		t.Fatal(err)
	}
}
