package rendezvous

import (
	"errors"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/internal/pathsock"
)

// parkServerConfig parks registrations idle for 200 ms, with keepalives
// every 300 ms.
func parkServerConfig() ServerConfig {
	return ServerConfig{Park: ParkConfig{After: 200 * time.Millisecond, Keepalive: 300 * time.Millisecond, WakeTimeout: 2 * time.Second}}
}

// newPathsTransport is newTransport on a pathsock.Conn, as a node's
// socket is (the park datagrams need it).
func newPathsTransport(t testing.TB) *quic.Transport {
	t.Helper()
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: pathsock.New(uc)}
	t.Cleanup(func() { tr.Close(); uc.Close() })
	return tr
}

func (c *Client) parkedNow() bool {
	c.mu.Lock()
	cc := c.conn
	c.mu.Unlock()
	return cc != nil && cc.isParked()
}

// waitParked waits for c to park, and rs to hold n parked registrations:
// after an introduction not before its flight's FlightWindow (10 s).
func waitParked(t *testing.T, rs *RunningServer, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(FlightWindow + 5*time.Second)
	for !c.parkedNow() || rs.parkedCount() != n {
		if time.Now().After(deadline) {
			t.Fatalf("the registration did not park (parked: %v, server: %d, want %d)", c.parkedNow(), rs.parkedCount(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A parked node is woken for an introduction, re-attaches and answers;
// the dialler's Connect gets its answer. Then it parks again.
func TestParkedNodeIsDialled(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	host := Candidate{Addr: netip.MustParseAddrPort("10.0.0.2:4900"), Kind: Host}
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t), func(c *ClientConfig) {
		c.Candidates = func() []Candidate { return []Candidate{host} }
	})
	answerAll(t, b)
	a := startClient(t, "a", mustKey(t), servers, newTransport(t)) // a plain socket: never parks
	waitParked(t, rs, b, 1)
	if a.parkedNow() {
		t.Fatal("a client without a pathsock socket parked")
	}
	for round := range 2 {
		start := time.Now()
		ans, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{})
		if err != nil {
			t.Fatalf("round %d: Connect to the parked node: %v", round, err)
		}
		if !hasCand(ans.Candidates, host) {
			t.Errorf("round %d: answer %v lacks the node's candidate %v", round, ans.Candidates, host)
		}
		t.Logf("round %d: connected to a parked node in %v", round, time.Since(start))
		waitParked(t, rs, b, 1) // idle again: parks again
	}
	if got := rs.pk.nResumed.Load(); got != 2 {
		t.Errorf("resumed %d parked registrations, want 2", got)
	}
}

// A parked node that dials re-attaches first.
func TestParkedNodeDials(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	b := startClient(t, "b", mustKey(t), servers, newTransport(t))
	answerAll(t, b)
	a := startClient(t, "a", mustKey(t), servers, newPathsTransport(t))
	waitParked(t, rs, a, 1)
	if _, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect from a parked node: %v", err)
	}
	if a.parkedNow() {
		t.Error("still parked right after its Connect")
	}
}

// A lost WAKE is sent again; a node whose WAKEs are all lost (and whose
// keepalives' answers say WAKE too) leaves the dialler with ErrNotWoken,
// not a hang.
func TestParkWakeLost(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	answerAll(t, b)
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	waitParked(t, rs, b, 1)

	var dropped atomic.Int32
	setParkDrop(t, func(kind byte) bool { return kind == parkKindWake && dropped.Add(1) == 1 })
	if _, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect with the first WAKE lost: %v", err)
	}
	if dropped.Load() < 1 {
		t.Fatal("no WAKE was dropped")
	}

	waitParked(t, rs, b, 1)
	setParkDrop(t, func(kind byte) bool { return kind == parkKindWake })
	start := time.Now()
	_, err := a.Connect(testCtx(t, 8*time.Second), b.cfg.Key.ID(), PeerInfo{})
	if !errors.Is(err, ErrNotWoken) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("Connect with every WAKE lost: %v, want ErrNotWoken (and ErrTimeout)", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("ErrNotWoken after %v, want about WakeTimeout (2s)", d)
	}
	if got := rs.pk.nNotWoken.Load(); got != 1 {
		t.Errorf("not woken: %d, want 1", got)
	}
}

// Forged keepalives (unknown tokens, the right token with a bad MAC, a
// replayed datagram) get no answer and leave no state; the parked
// registration still works.
func TestParkForgedKeepaliveFlood(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	answerAll(t, b)
	waitParked(t, rs, b, 1)
	b.mu.Lock()
	p := b.conn.park
	b.mu.Unlock()

	forger, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	var badKey [16]byte
	p.mu.Lock()
	replay := appendParkDatagram(nil, parkToServer, p.token, 1, parkKeepalive, &p.key) // counter 1: used already
	p.mu.Unlock()
	const n = 3000
	for i := range n {
		var pkt []byte
		switch i % 3 {
		case 0:
			pkt = appendParkDatagram(nil, parkToServer, uint64(i)+1<<40, 1, parkKeepalive, &badKey)
		case 1:
			pkt = appendParkDatagram(nil, parkToServer, p.token, uint64(1e9+i), parkKeepalive, &badKey)
		case 2:
			pkt = replay
		}
		forger.WriteToUDPAddrPort(pkt, rs.UDPAddr())
	}
	waitFor(t, "the forged keepalives to be counted", func() bool { return rs.pk.nBadKeepalives.Load() >= n*9/10 })
	// Only the unknown tokens are answered, with a hint (TestParkForgedHints
	// bounds them), never a PONG or a WAKE.
	buf := make([]byte, 100)
	for {
		forger.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		k, _, err := forger.ReadFromUDPAddrPort(buf)
		if err != nil {
			break
		}
		if k != parkDatagramLen || buf[17] != parkKindUnknown {
			t.Fatalf("the server answered a forged keepalive with % x", buf[:k])
		}
	}
	if got := rs.parkedCount(); got != 1 {
		t.Errorf("parked: %d, want 1 (forgeries keep no state)", got)
	}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	if _, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect after the flood: %v", err)
	}
}

// Forged or replayed server datagrams do not wake a parked node (which
// would make nodes reconnect en masse).
func TestParkForgedWake(t *testing.T) {
	rs, b, cc := startParkedNode(t, parkServerConfig())
	p := cc.park
	var badKey [16]byte
	p.mu.Lock()
	old := p.rcvCtr
	p.mu.Unlock()
	for i := range 1000 {
		cc.takePark(appendParkDatagram(nil, parkToNode, p.token, old+uint64(i)+1, parkKindWake, &badKey), rs.UDPAddr())
		cc.takePark(appendParkDatagram(nil, parkToNode, p.token, old, parkKindWake, &p.key), rs.UDPAddr()) // a replay
	}
	time.Sleep(200 * time.Millisecond)
	if !b.parkedNow() || rs.pk.nResumed.Load() != 0 {
		t.Fatal("a forged or replayed WAKE woke the node")
	}
}

// The server's WAKEs stay within WakeRate.
func TestParkWakeRate(t *testing.T) {
	s, err := NewServer(ServerConfig{Park: ParkConfig{After: time.Second, WakeRate: 5}})
	if err != nil {
		t.Fatal(err)
	}
	s.pk.tokens, s.pk.refill = 5, time.Now()
	sent := 0
	now := time.Now()
	for range 100 {
		if _, ok := s.wakeLocked(&parkState{}, now); ok {
			sent++
		}
	}
	if sent != 5 {
		t.Errorf("%d WAKEs at once, want the burst of 5", sent)
	}
	if _, ok := s.wakeLocked(&parkState{}, now.Add(time.Second)); !ok {
		t.Error("no WAKE a second later")
	}
}

// Without an offer (a server whose parking is off, as an old server) or
// with ParkAfter < 0 (as an old client) nothing parks.
func TestParkOnlyWhenBothAgree(t *testing.T) {
	off := startTestServer(t, ServerConfig{Park: ParkConfig{After: -1}})
	c1 := startClient(t, "c1", mustKey(t), []ServerAddr{off.ServerAddr()}, newPathsTransport(t), func(c *ClientConfig) { c.ParkAfter = 100 * time.Millisecond })
	on := startTestServer(t, parkServerConfig())
	c2 := startClient(t, "c2", mustKey(t), []ServerAddr{on.ServerAddr()}, newPathsTransport(t), func(c *ClientConfig) { c.ParkAfter = -1 })
	time.Sleep(time.Second)
	if c1.parkedNow() || c2.parkedNow() || on.parkedCount() != 0 {
		t.Fatal("parked without both sides agreeing")
	}
	if c1.Current() == (ServerAddr{}) || c2.Current() == (ServerAddr{}) {
		t.Fatal("not registered")
	}
}

// A parked node that closes is forgotten at once (its leave datagram);
// one that another process replaces learns it (Replaced).
func TestParkedLeaveAndReplace(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))

	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	waitParked(t, rs, b, 1)
	b.Close()
	waitFor(t, "the server to forget the parked node", func() bool { return rs.parkedCount() == 0 })
	if _, err := a.Connect(testCtx(t, 5*time.Second), b.cfg.Key.ID(), PeerInfo{}); !errors.Is(err, ErrPeerOffline) {
		t.Errorf("Connect to a node that left: %v, want ErrPeerOffline", err)
	}

	key := mustKey(t)
	c := startClient(t, "c", key, servers, newPathsTransport(t))
	waitParked(t, rs, c, 1)
	c2 := startClient(t, "c2", key, servers, newTransport(t))
	select {
	case <-c.Replaced():
	case <-time.After(5 * time.Second):
		t.Fatal("the parked node was not told it was replaced")
	}
	answerAll(t, c2)
	if _, err := a.Connect(testCtx(t, 5*time.Second), key.ID(), PeerInfo{}); err != nil {
		t.Errorf("Connect to the replacing registration: %v", err)
	}
}

// A parked registration whose keepalives stop expires; a node whose
// server stops answering registers again.
func TestParkedExpiry(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	b := startClient(t, "b", mustKey(t), []ServerAddr{rs.ServerAddr()}, newPathsTransport(t))
	waitParked(t, rs, b, 1)
	setParkDrop(t, func(byte) bool { return true }) // the node hears nothing
	deadline := time.Now().Add(15 * time.Second)
	for b.parkedNow() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if b.parkedNow() {
		t.Fatal("still parked although the server's answers were lost")
	}
	testParkDrop.Store(nil)
	waitFor(t, "the node to register again", func() bool { return b.Current() != (ServerAddr{}) })
}

// setParkDrop drops the server's park datagrams for which drop returns
// true, until the test ends.
func setParkDrop(t *testing.T, drop func(kind byte) bool) {
	testParkDrop.Store(&drop)
	t.Cleanup(func() { testParkDrop.Store(nil) })
}

// nopSocket is a PacketSocket that sends nothing.
type nopSocket struct{ sent atomic.Int64 }

func (*nopSocket) Intercept(byte, netip.AddrPort, func([]byte, netip.AddrPort) (int, netip.AddrPort)) func() {
	return func() {}
}
func (n *nopSocket) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) {
	n.sent.Add(1)
	return len(b), nil
}
func (*nopSocket) WriteSegments([]byte, int, netip.AddrPort) error { return nil }

// BenchmarkParkKeepalive: the server's CPU for one parked node's
// keepalive (check, answer), without the system calls, among 10,000
// parked registrations; and for a forged one (unknown token).
//
//	go test -run '^$' -bench BenchmarkParkKeepalive ./rendezvous/
func BenchmarkParkKeepalive(b *testing.B) {
	s, err := NewServer(ServerConfig{Park: ParkConfig{After: time.Minute}})
	if err != nil {
		b.Fatal(err)
	}
	sock := &nopSocket{}
	s.pk.sock = sock
	s.pk.parked = map[uint64]*session{}
	s.pk.waking = map[*session]struct{}{}
	const n = 10000
	parks := make([]*parkState, n)
	for i := range parks {
		p := &parkState{token: uint64(i + 1), heard: time.Now()}
		p.key[0] = byte(i)
		parks[i] = p
		s.pk.parked[p.token] = &session{park: p}
	}
	from := netip.MustParseAddrPort("192.0.2.1:4000")
	b.Run("valid", func(b *testing.B) {
		pkts := make([][]byte, n)
		ctr := uint64(0)
		for b.Loop() {
			i := int(ctr % n)
			if i == 0 { // the next round's datagrams, counters one up
				b.StopTimer()
				ctr2 := ctr/n + 1
				for j, p := range parks {
					pkts[j] = appendParkDatagram(pkts[j][:0], parkToServer, p.token, ctr2, parkKeepalive, &p.key)
				}
				b.StartTimer()
			}
			s.takeKeepalive(pkts[i], from)
			ctr++
		}
		if sock.sent.Load() == 0 {
			b.Fatal("no answer sent")
		}
	})
	// The park lock as the sweeper and parkEnqueue take it, while another
	// goroutine floods keepalives that name parked tokens with bad MACs
	// (each costs an HMAC): what the flood makes everyone else wait.
	b.Run("lock-under-flood", func(b *testing.B) {
		var key [16]byte
		pkts := make([][]byte, 64)
		for i := range pkts {
			pkts[i] = appendParkDatagram(nil, parkToServer, parks[i].token, 1<<50, parkKeepalive, &key)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				s.takeKeepalive(pkts[i%len(pkts)], from)
			}
		}()
		for b.Loop() {
			s.pmu.Lock()
			s.pk.tokens++ // something to do under the lock
			s.pmu.Unlock()
		}
		close(stop)
		<-done
	})
	b.Run("forged", func(b *testing.B) {
		var key [16]byte
		pkt := appendParkDatagram(nil, parkToServer, 1<<60, 1, parkKeepalive, &key)
		before := sock.sent.Load()
		start := time.Now()
		for b.Loop() {
			s.takeKeepalive(pkt, from)
		}
		if got, limit := sock.sent.Load()-before, int64(s.cfg.Park.HintRate*(1+time.Since(start).Seconds())); got > limit {
			b.Fatalf("%d hints answered forged keepalives, over HintRate (%d)", got, limit)
		}
	})
}

// What waits for a parked node is bounded (ParkConfig.MaxQueue): an
// introduction beyond it gets ErrBusy at once; those queued get
// ErrNotWoken when the node does not come. One WAKE a second at most.
func TestParkQueueBounded(t *testing.T) {
	cfg := parkServerConfig()
	cfg.Park.MaxQueue = 2
	rs := startTestServer(t, cfg)
	servers := []ServerAddr{rs.ServerAddr()}
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	waitParked(t, rs, b, 1)
	setParkDrop(t, func(kind byte) bool { return kind == parkKindWake })
	errs := make(chan error, 4)
	for range 4 {
		go func() {
			_, err := a.Connect(testCtx(t, 8*time.Second), b.cfg.Key.ID(), PeerInfo{})
			errs <- err
		}()
	}
	var busy, notWoken int
	for range 4 {
		switch err := <-errs; {
		case errors.Is(err, ErrNotWoken):
			notWoken++
		case errors.Is(err, ErrBusy):
			busy++
		default:
			t.Errorf("Connect: %v, want ErrBusy or ErrNotWoken", err)
		}
	}
	if busy != 2 || notWoken != 2 {
		t.Errorf("%d ErrBusy and %d ErrNotWoken, want 2 and 2 (queue of 2)", busy, notWoken)
	}
	// Within the WakeTimeout of 2 s: the first WAKE, and the answers to
	// the node's keepalives (every 300 ms), which say WAKE instead of PONG
	// (the resend each second waits while they do): 8 or so.
	if w := rs.Stats().Wakes; w < 2 || w > 10 {
		t.Errorf("%d WAKEs sent in 2 s, want 2-10 (the first, then one per keepalive)", w)
	}
}

// A server that stops tells its parked nodes (GONE): they register with
// the next server at once rather than after their keepalives go
// unanswered.
func TestParkedServerShutdown(t *testing.T) {
	rs1 := startTestServer(t, parkServerConfig())
	rs2 := startTestServer(t, ServerConfig{})
	b := startClient(t, "b", mustKey(t), []ServerAddr{rs1.ServerAddr(), rs2.ServerAddr()}, newPathsTransport(t))
	waitParked(t, rs1, b, 1)
	start := time.Now()
	rs1.Close()
	waitFor(t, "the node to register with the other server", func() bool { return b.Current() == rs2.ServerAddr() })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("registered elsewhere after %v: GONE was not heeded (keepalive loss takes ~8 s)", d)
	}
}

// A frame for a parked session that a newer registration took over
// (connect or relayFlight read the target before the node re-attached)
// goes to the new registration: the introduction reaches the node once.
// One for a parked session that left is refused, so the introduction
// fails at once; neither waits in a queue nobody reads, nor leaves the
// old session among those waking.
func TestParkStaleSession(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	answerAll(t, a)
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	waitParked(t, rs, b, 1)
	sessionOf := func(c *Client) *session {
		rs.mu.Lock()
		defer rs.mu.Unlock()
		return rs.peers[c.cfg.Key.ID()]
	}
	waking := func() int {
		rs.pmu.Lock()
		defer rs.pmu.Unlock()
		return len(rs.pk.waking)
	}
	old := sessionOf(b)
	if _, err := b.Connect(testCtx(t, 5*time.Second), a.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect from the parked node: %v", err)
	}
	const id = 1 << 40
	if !old.trySend(typeIntro, introBody{ID: id, Offer: PeerInfo{Peer: a.cfg.Key.ID()}}) {
		t.Error("a frame for the parked session that was taken over was refused")
	}
	select {
	case in := <-b.Incoming():
		if in.id != id {
			t.Errorf("introduction %d, want %d", in.id, id)
		}
	case <-time.After(3 * time.Second):
		t.Error("the introduction for the parked session that was taken over never reached the node")
	}
	if n := waking(); n != 0 {
		t.Errorf("%d sessions waking after the take-over, want 0", n)
	}

	c := startClient(t, "c", mustKey(t), servers, newPathsTransport(t))
	waitParked(t, rs, c, 2)
	gone := sessionOf(c)
	c.Close()
	waitFor(t, "the server to forget the parked node that left", func() bool { return rs.parkedCount() == 1 })
	if gone.trySend(typeIntro, introBody{ID: id + 1}) {
		t.Error("a frame for a parked session that left was accepted (lost)")
	}
	if n := waking(); n != 0 {
		t.Errorf("%d sessions waking after a parked node left, want 0", n)
	}
}

// A frame for a parked node that re-attaches, sent the moment its new
// registration is among the server's peers (a FLIGHT retransmitted by
// the dialler, another introduction), reaches it after REGISTERED: the
// re-attach succeeds and resumes the parked registration.
func TestParkResumeFrameBeforeRegistered(t *testing.T) {
	rs := startTestServer(t, parkServerConfig())
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	answerAll(t, a)
	b := startClient(t, "b", mustKey(t), servers, newPathsTransport(t))
	waitParked(t, rs, b, 1)
	var regs atomic.Int32
	gap := func(ss *session) {
		if ss.peer == b.cfg.Key.ID() && regs.Add(1) == 1 {
			ss.trySend(typeFlight, flightBody{Intro: 1 << 40, Packet: []byte{0xc0}})
		}
	}
	testRegisterGap.Store(&gap)
	t.Cleanup(func() { testRegisterGap.Store(nil) })
	if _, err := b.Connect(testCtx(t, 5*time.Second), a.cfg.Key.ID(), PeerInfo{}); err != nil {
		t.Fatalf("Connect from the parked node: %v", err)
	}
	if n := regs.Load(); n != 1 {
		t.Errorf("the node registered %d times to dial, want 1 (the re-attach failed on a frame before REGISTERED)", n)
	}
}

// A parked node's queue never takes more than its new session's send
// queue holds after REGISTERED (the re-attach hands it over whole): a
// larger ParkConfig.MaxQueue accepted frames that the hand-over then
// dropped, introductions lost without an answer.
func TestParkQueueFitsSession(t *testing.T) {
	cfg := parkServerConfig()
	cfg.Park.MaxQueue = 10 * sendQueueLen
	rs := startTestServer(t, cfg)
	b := startClient(t, "b", mustKey(t), []ServerAddr{rs.ServerAddr()}, newPathsTransport(t))
	setParkDrop(t, func(kind byte) bool { return kind == parkKindWake })
	waitParked(t, rs, b, 1)
	rs.mu.Lock()
	ss := rs.peers[b.cfg.Key.ID()]
	rs.mu.Unlock()
	accepted := 0
	for i := range 2 * sendQueueLen {
		if ss.trySend(typeFlight, flightBody{Intro: uint64(1<<40 + i), Packet: []byte{0xc0}}) {
			accepted++
		}
	}
	if accepted > sendQueueLen-1 {
		t.Errorf("the parked queue took %d frames; a re-attached session holds %d after REGISTERED", accepted, sendQueueLen-1)
	}
}
