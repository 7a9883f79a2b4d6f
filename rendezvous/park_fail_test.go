package rendezvous

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

// Parked registrations when things fail: a node that fails over, a
// server that never answers PARK, a server that restarted.

// startParkedNode starts a server and a node that parks there; it
// returns the node's parked registration (whose takePark takes its
// server's park datagrams).
func startParkedNode(t *testing.T, cfg ServerConfig) (*RunningServer, *Client, *clientConn) {
	t.Helper()
	rs := startTestServer(t, cfg)
	b := startClient(t, "b", mustKey(t), []ServerAddr{rs.ServerAddr()}, newPathsTransport(t))
	waitParked(t, rs, b, 1)
	b.mu.Lock()
	cc := b.conn
	b.mu.Unlock()
	return rs, b, cc
}

// setParkRetries shortens the keepalive resends for the test.
func setParkRetries(t *testing.T, d ...time.Duration) {
	old := parkRetries
	parkRetries = d
	t.Cleanup(func() { parkRetries = old })
}

// setParkHold runs hold before the server handles each PARK.
func setParkHold(t *testing.T, hold func(*session) bool) {
	testParkHold.Store(&hold)
	t.Cleanup(func() { testParkHold.Store(nil) })
}

// A parked node that stops hearing its server fails over to the next one
// and tells the old server it left: the old server forgets the parked
// registration at once (an introduction to the node there gets
// peer_offline at once, not not_woken after WakeTimeout), rather than
// keeping it, waking and queueing for it, until it expires.
func TestParkLeaveOnFailover(t *testing.T) {
	setParkRetries(t, 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond)
	cfg := parkServerConfig()
	cfg.Park.Keepalive = 2 * time.Second // expiry 11 s: far beyond the test's bound
	rs1 := startTestServer(t, cfg)
	rs2 := startTestServer(t, ServerConfig{})
	b := startClient(t, "b", mustKey(t), []ServerAddr{rs1.ServerAddr(), rs2.ServerAddr()}, newPathsTransport(t))
	waitParked(t, rs1, b, 1)
	setParkDrop(t, func(byte) bool { return true }) // b hears nothing from rs1; rs1 hears b
	waitFor(t, "the node to fail over", func() bool { return b.Current() == rs2.ServerAddr() })
	moved := time.Now()
	waitFor(t, "the old server to forget the parked node", func() bool { return rs1.parkedCount() == 0 })
	if d := time.Since(moved); d > time.Second {
		t.Errorf("the old server forgot the node %v after it failed over, want at once (expiry: %v)", d, cfg.Park.withDefaults().parkExpiry())
	}
	if l, e := rs1.pk.nLeaves.Load(), rs1.pk.nExpired.Load(); l != 1 || e != 0 {
		t.Errorf("old server: %d leaves, %d expired; want 1, 0", l, e)
	}
	a := startClient(t, "a", mustKey(t), []ServerAddr{rs1.ServerAddr()}, newTransport(t))
	start := time.Now()
	if _, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); !errors.Is(err, ErrPeerOffline) {
		t.Errorf("Connect to the node at its old server: %v, want ErrPeerOffline", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("the old server's answer took %v", d)
	}
}

// A server that never answers PARK: the node waits parkAnswerTimeout,
// then stays registered on its connection (it dials, and is dialled) and
// does not ask again on it.
func TestParkUnanswered(t *testing.T) {
	old := parkAnswerTimeout
	parkAnswerTimeout = 300 * time.Millisecond
	t.Cleanup(func() { parkAnswerTimeout = old })
	var parks atomic.Int32
	setParkHold(t, func(*session) bool { parks.Add(1); return false })
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	answerAll(t, a)
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	answerAll(t, b)
	waitFor(t, "the node to send PARK", func() bool { return parks.Load() == 1 })
	start := time.Now()
	if _, err := b.Connect(testCtx(t, 5*time.Second), a.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect while PARK is unanswered: %v", err)
	}
	if d := time.Since(start); d > parkAnswerTimeout+time.Second {
		t.Errorf("Connect took %v, want about parkAnswerTimeout (%v)", d, parkAnswerTimeout)
	}
	time.Sleep(time.Second) // five times the server's park-after
	if _, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect to the node: %v", err)
	}
	if n := parks.Load(); n != 1 {
		t.Errorf("%d PARKs on the connection, want 1", n)
	}
	if b.parkedNow() {
		t.Error("parked without PARKED")
	}
}

// A PARKED that comes after the node stopped waiting for it: the server
// parked before it read what the node wrote since; the node's Connect
// fails on the parked connection and is asked again on the woken one.
func TestParkLateParked(t *testing.T) {
	old := parkAnswerTimeout
	parkAnswerTimeout = 300 * time.Millisecond
	t.Cleanup(func() { parkAnswerTimeout = old })
	held := make(chan struct{})
	var once atomic.Bool
	setParkHold(t, func(*session) bool {
		if once.CompareAndSwap(false, true) {
			close(held)
			time.Sleep(time.Second)
		}
		return true
	})
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	answerAll(t, a)
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	<-held
	time.Sleep(2 * parkAnswerTimeout) // the node no longer waits
	if _, err := b.Connect(testCtx(t, 5*time.Second), a.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect across a late PARKED: %v", err)
	}
	if got := rs.pk.nResumed.Load(); got != 1 {
		t.Errorf("resumed: %d, want 1 (the Connect woke the late-parked registration)", got)
	}
}

// restartServer closes rs as a crash would look to a parked node (its
// GONE is lost: the node drops the kinds drop says, GONE among them,
// until the test ends) and starts a server with the same key on the
// same address.
func restartServer(t *testing.T, rs *RunningServer, cfg ServerConfig, drop func(kind byte) bool) *RunningServer {
	t.Helper()
	setParkDrop(t, func(k byte) bool { return k == parkKindGone || drop(k) })
	addr := rs.UDPAddr()
	rs.Close()
	cfg.Logger = testLogger(t, "server2")
	var rs2 *RunningServer
	var err error
	for range 50 { // the old sockets may take a moment to go
		if rs2, err = StartServer(context.Background(), cfg, addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs2.Close() })
	return rs2
}

// After its server crashed and came back, a parked node is reachable
// again within one keepalive period (it sends its next keepalive; the
// restarted server, which does not know the token, hints so; the node
// registers again): the control, whose hints are lost, takes the
// keepalive period plus the resends (1+2+4 s) that declare the server
// lost.
func TestParkRestartHint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		lose    bool
		minD    time.Duration
		maxD    time.Duration
		comment string
	}{
		{"hint", false, 0, 2*time.Second + 1500*time.Millisecond, "keepalive + a registration"},
		{"control-hint-lost", true, 7 * time.Second, 2*time.Second + 9*time.Second, "keepalive + 7 s of resends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := parkServerConfig()
			cfg.Key = mustKey(t)
			cfg.Park.Keepalive = 2 * time.Second
			rs := startTestServer(t, cfg)
			b := startClient(t, "b", mustKey(t), []ServerAddr{rs.ServerAddr()}, newPathsTransport(t))
			answerAll(t, b)
			waitParked(t, rs, b, 1)
			rs2 := restartServer(t, rs, cfg, func(k byte) bool { return tc.lose && k == parkKindUnknown })
			restarted := time.Now()
			a := startClient(t, "a", mustKey(t), []ServerAddr{rs2.ServerAddr()}, newTransport(t))
			var err error
			for time.Since(restarted) < 20*time.Second {
				if _, err = a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); err == nil {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("the node never became reachable again: %v", err)
			}
			d := time.Since(restarted)
			t.Logf("reachable %v after the restart (keepalive %v; bound: %s)", d.Round(time.Millisecond), cfg.Park.Keepalive, tc.comment)
			if d < tc.minD || d > tc.maxD {
				t.Errorf("reachable after %v, want %v-%v", d, tc.minD, tc.maxD)
			}
			if h := rs2.pk.nHints.Load(); h < 1 {
				t.Errorf("the restarted server sent %d hints, want at least 1", h)
			}
		})
	}
}

// Forged "unknown" hints (a bad MAC echo, a counter the node never sent
// or sent long ago) do not make a parked node register again; keepalives
// that name no parked registration are answered with at most
// ParkConfig.HintRate hints, each no larger than what came.
func TestParkForgedHints(t *testing.T) {
	cfg := parkServerConfig()
	cfg.Park.HintRate = 50
	rs, b, cc := startParkedNode(t, cfg)
	p := cc.park
	hint := func(ctr uint64, mac []byte) []byte {
		h := appendParkDatagram(nil, parkToNode, p.token, ctr, parkKindUnknown, &p.key)
		copy(h[18:], mac)
		return h
	}
	p.mu.Lock()
	sent := p.sndCtr
	p.mu.Unlock()
	var badKey [16]byte
	for i := range 200 {
		ctr := sent - uint64(i%2)
		cc.takePark(hint(ctr, appendParkDatagram(nil, parkToServer, p.token, ctr, parkKeepalive, &badKey)[18:]), rs.UDPAddr()) // a guessed MAC
		cc.takePark(hint(sent+1000+uint64(i), make([]byte, 16)), rs.UDPAddr())                                                 // a counter never sent
	}
	if sent > unknownHintWindow { // a keepalive recorded long ago, echoed
		cc.takePark(hint(1, appendParkDatagram(nil, parkToServer, p.token, 1, parkKeepalive, &p.key)[18:]), rs.UDPAddr())
	}
	time.Sleep(200 * time.Millisecond)
	b.mu.Lock()
	same := b.conn == cc
	b.mu.Unlock()
	if !same || !b.parkedNow() || rs.pk.nResumed.Load() != 0 || rs.parkedCount() != 1 {
		t.Fatal("a forged hint made the node register again")
	}

	forger, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	const n = 500
	start := time.Now()
	for i := range n {
		forger.WriteToUDPAddrPort(appendParkDatagram(nil, parkToServer, uint64(i)+1<<40, 7, parkKeepalive, &badKey), rs.UDPAddr())
	}
	hints := 0
	buf := make([]byte, 100)
	for {
		forger.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		k, _, err := forger.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if k != parkDatagramLen || buf[0] != parkToNode || buf[17] != parkKindUnknown || binary.BigEndian.Uint64(buf[9:17]) != 7 {
			t.Fatalf("answer % x to a keepalive with an unknown token: want an unknown hint echoing it", buf[:k])
		}
		hints++
	}
	limit := int(cfg.Park.HintRate * (1 + time.Since(start).Seconds()))
	t.Logf("%d hints for %d unknown-token keepalives (limit %d)", hints, n, limit)
	if hints == 0 || hints > limit {
		t.Errorf("%d hints, want 1-%d (ParkConfig.HintRate)", hints, limit)
	}
	if !b.parkedNow() || rs.parkedCount() != 1 {
		t.Error("the parked node was disturbed by the flood")
	}
}

// Parking is on by default: a zero ServerConfig offers it after
// DefaultParkAfter; a negative Park.After turns it off.
func TestParkDefaultOn(t *testing.T) {
	for _, tc := range []struct {
		after, want time.Duration
	}{{0, DefaultParkAfter}, {-1, 0}, {90 * time.Second, 90 * time.Second}} {
		rs := startTestServer(t, ServerConfig{Park: ParkConfig{After: tc.after}})
		c := startClient(t, "c", mustKey(t), []ServerAddr{rs.ServerAddr()}, newPathsTransport(t))
		c.mu.Lock()
		got := c.conn.parkAfter
		c.mu.Unlock()
		if got != tc.want {
			t.Errorf("Park.After %v: the client was offered parking after %v, want %v", tc.after, got, tc.want)
		}
		c.Close()
	}
}

// A parked node that another registration of its peer ID replaced, and
// that lost the REPLACED datagram, is told again in answer to its next
// keepalive: it does not take the "unknown" hint for a forgotten
// registration, register again and take the registration back from its
// successor (the two would then replace each other in turn).
func TestParkReplacedLost(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	key := mustKey(t)
	c := startClient(t, "c", key, servers, newPathsTransport(t))
	waitParked(t, rs, c, 1)
	var dropped atomic.Int32
	setParkDrop(t, func(kind byte) bool { return kind == parkKindReplaced && dropped.Add(1) == 1 })
	c2 := startClient(t, "c2", key, servers, newTransport(t))
	answerAll(t, c2)
	select {
	case <-c.Replaced():
	case <-time.After(5 * time.Second):
		t.Fatal("the parked node was never told it was replaced")
	}
	if dropped.Load() < 2 {
		t.Fatalf("%d REPLACED datagrams reached the parked node, want the first lost and a second", dropped.Load())
	}
	if n := rs.pk.nReplacedAgain.Load(); n < 1 {
		t.Errorf("the server sent REPLACED again %d times, want at least 1", n)
	}
	// Three keepalive periods later the successor still holds the
	// registration and answers.
	time.Sleep(3 * parkServerConfig().Park.Keepalive)
	select {
	case <-c2.Replaced():
		t.Fatal("the replaced node took the registration back from its successor")
	default:
	}
	if _, err := a.Connect(testCtx(t, 5*time.Second), key.ID(), PeerInfo{}); err != nil {
		t.Errorf("Connect to the successor: %v", err)
	}
	if h := rs.pk.nHints.Load(); h != 0 {
		t.Errorf("the server sent %d unknown hints, want 0", h)
	}
}

// The replaced parked registrations the server remembers are bounded
// (maxReplacedParked) and forgotten after the parked expiry.
func TestParkReplacedBounded(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	rs.pmu.Lock()
	for i := range maxReplacedParked {
		rs.pk.replaced[uint64(i)+1<<40] = &parkState{token: uint64(i) + 1<<40, replacedAt: time.Now()}
	}
	rs.pmu.Unlock()
	key := mustKey(t)
	c := startClient(t, "c", key, servers, newPathsTransport(t))
	waitParked(t, rs, c, 1)
	c2 := startClient(t, "c2", key, servers, newTransport(t))
	answerAll(t, c2)
	select {
	case <-c.Replaced():
	case <-time.After(5 * time.Second):
		t.Fatal("the parked node was not told it was replaced")
	}
	rs.pmu.Lock()
	n := len(rs.pk.replaced)
	rs.pmu.Unlock()
	if n != maxReplacedParked {
		t.Errorf("the server remembers %d replaced registrations, want its bound %d", n, maxReplacedParked)
	}
	// Past the expiry (3 keepalives + 5 s) the sweeper forgets them.
	rs.pmu.Lock()
	for _, rp := range rs.pk.replaced {
		rp.replacedAt = time.Now().Add(-time.Hour)
	}
	rs.pmu.Unlock()
	waitFor(t, "the sweeper to forget the replaced registrations", func() bool {
		rs.pmu.Lock()
		defer rs.pmu.Unlock()
		return len(rs.pk.replaced) == 0
	})
}
