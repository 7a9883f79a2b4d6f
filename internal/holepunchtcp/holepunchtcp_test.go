package holepunchtcp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
	"github.com/reachp2p/reach/internal/directtcp"
	"github.com/reachp2p/reach/internal/rung"
	"github.com/reachp2p/reach/internal/sock"
	"github.com/reachp2p/reach/stream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// node is a rung with its direct-tcp rung, on a socket of 0.0.0.0; got
// collects the sessions handed to the node (each echoes its streams).
type node struct {
	r   *Rung
	key *identity.Key
	mu  sync.Mutex
	got []*stream.Session
}

func (n *node) take(sess *stream.Session) bool {
	n.mu.Lock()
	n.got = append(n.got, sess)
	n.mu.Unlock()
	go func() {
		for {
			st, err := sess.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				io.Copy(st, st)
				st.CloseWrite()
			}()
		}
	}()
	return true
}

func (n *node) sessions() []*stream.Session {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*stream.Session(nil), n.got...)
}

func startNode(t *testing.T, lim Limits) *node {
	t.Helper()
	key, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort("0.0.0.0:0"), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	n := &node{key: key}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	h := &rung.Host{Key: key, Socket: s, Logger: testLogger(t), Accepted: n.take,
		Context: ctx, Go: func(f func()) { wg.Go(f) },
		Session:        stream.Config{HandshakeTimeout: 3 * time.Second},
		InterfaceAddrs: func() ([]net.Addr, error) { return nil, nil }}
	dt := directtcp.New(h, directtcp.Limits{})
	if err := dt.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	n.r = New(h, dt, lim, nil)
	n.r.Start(context.Background()) // no server: nothing to measure
	t.Cleanup(func() {
		dt.Close()
		for _, s := range n.sessions() {
			s.Abort()
		}
	})
	return n
}

// info is what n says in an introduction, as the server forwards it
// from a node registered over TCP: a tcp-host address (an interface the
// peer cannot reach) and the IP the server saw (loopback here), so the
// predicted address is 127.0.0.1 with n's listening port.
func (n *node) info() candidate.PeerInfo {
	port := n.r.dt.Listener().Addr().Port()
	return candidate.PeerInfo{Peer: n.key.ID(), Candidates: []candidate.Candidate{
		{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.255.0.1"), port), Kind: candidate.TCPHost},
		{Addr: netip.MustParseAddrPort("127.0.0.1:40000"), Kind: candidate.TCPReflexive},
	}}
}

// TestPunch: a dialler and a listener whose UDP looks blocked punch to
// each other's predicted TCP addresses from their listening ports; the
// dialler's Connect returns a holepunch-tcp session over tcp with the
// listener's key, the listener's node gets the other side, a stream
// echoes intact. On loopback one side's connect() reaches the other's
// listener: the listener's first (the dialler's claim makes the dialler
// the TLS client on it), or the dialler's (the listener's own handshake).
// As in a real introduction, the dialler's listener cannot be reached
// before its Connect claims the peer's address: a NAT drops the early
// SYN, and a public dialler, whose SYNs could arrive, is direct-tcp's
// (the rung sits out).
func TestPunch(t *testing.T) {
	claimed := make(chan struct{}, 1)
	afterClaim = func() {
		select {
		case claimed <- struct{}{}:
		default:
		}
	}
	defer func() { afterClaim = func() {} }()
	for i := range 6 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			// No primer: on loopback it would reach the dialler, and its
			// socket is gone by the time the SYN-ACK comes back.
			d, l := startNode(t, Limits{PrimerTTL: -1}), startNode(t, Limits{PrimerTTL: -1})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			a := &rung.Attempt{Key: d.key, Peer: l.key.ID(), Local: d.info(), Remote: l.info(), Logger: testLogger(t),
				Session: stream.Config{HandshakeTimeout: 3 * time.Second}}
			if _, ok := d.r.Plan(a, 0); !ok {
				t.Fatal("not planned for a pair without UDP")
			}
			type result struct {
				s   *stream.Session
				err error
			}
			res := make(chan result, 1)
			go func() {
				s, err := d.r.Connect(ctx, a)
				res <- result{s, err}
			}()
			<-claimed
			if i%2 == 1 {
				time.Sleep(20 * time.Millisecond) // the dialler's SYN first
			}
			l.r.Introduced(d.info())
			r := <-res
			if r.err != nil {
				t.Fatalf("Connect: %v", r.err)
			}
			defer r.s.Abort()
			if r.s.RemotePeer() != l.key.ID() || r.s.Transport() != stream.TransportTCP {
				t.Errorf("session with %v over %s", r.s.RemotePeer(), r.s.Transport())
			}
			st, err := r.s.OpenStream(ctx)
			if err != nil {
				t.Fatal(err)
			}
			msg := bytes.Repeat([]byte("punched "), 8192)
			go func() { st.Write(msg); st.CloseWrite() }()
			if back, err := io.ReadAll(st); err != nil || !bytes.Equal(back, msg) {
				t.Errorf("echo: %d bytes, %v", len(back), err)
			}
			if got := l.sessions(); len(got) != 1 || got[0].RemotePeer() != d.key.ID() {
				t.Errorf("the listener's node got %d sessions", len(got))
			}
		})
	}
}

// TestNotApplicable: with UDP on the peer's side and this one's, or
// without a predicted address, the rung sits out and Connect says
// ErrNotApplicable.
func TestNotApplicable(t *testing.T) {
	d := startNode(t, Limits{})
	d.r.h.Observed = func() netip.AddrPort { return netip.MustParseAddrPort("198.51.100.2:4000") }
	withUDP := d.info()
	withUDP.Candidates = append(withUDP.Candidates, candidate.Candidate{Addr: netip.MustParseAddrPort("198.51.100.1:4000"), Kind: candidate.Reflexive})
	noAddr := candidate.PeerInfo{Peer: withUDP.Peer}
	for name, p := range map[string]candidate.PeerInfo{"UDP on both sides": withUDP, "no TCP address": noAddr} {
		a := &rung.Attempt{Key: d.key, Peer: p.Peer, Remote: p, Logger: testLogger(t)}
		if _, ok := d.r.Plan(a, 0); ok {
			t.Errorf("%s: planned", name)
		}
		if _, err := d.r.Connect(context.Background(), a); !errors.Is(err, ErrNotApplicable) {
			t.Errorf("%s: %v, want ErrNotApplicable", name, err)
		}
	}
}

// TestPunchFlood: introductions from many diallers whose predicted
// addresses refuse (a closed port) make the listener punch for at most
// MaxPunches at once, each for at most MaxAttempts connect() calls; the
// punches end on their own and leave nothing behind (goleak).
func TestPunchFlood(t *testing.T) {
	lim := Limits{MaxPunches: 3, MaxAttempts: 3, Window: 10 * time.Second}
	l := startNode(t, lim)
	// A closed port per dialler (connects to it are refused): diallers
	// have addresses of their own, and one punch's primer, alive in
	// SYN-SENT, holds its four-tuple.
	var ports []int
	for range 20 {
		closed, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ports = append(ports, closed.Addr().(*net.TCPAddr).Port)
		closed.Close()
	}
	start := time.Now()
	for _, port := range ports {
		k, err := identity.GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		l.r.Introduced(candidate.PeerInfo{Peer: k.ID(), Candidates: []candidate.Candidate{
			{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.255.0.1"), uint16(port)), Kind: candidate.TCPHost},
			{Addr: netip.MustParseAddrPort("127.0.0.1:40000"), Kind: candidate.TCPReflexive},
		}})
	}
	l.r.mu.Lock()
	running := len(l.r.punches)
	l.r.mu.Unlock()
	if running != lim.MaxPunches {
		t.Errorf("%d punches at once, want %d (MaxPunches)", running, lim.MaxPunches)
	}
	deadline := time.Now().Add(8 * time.Second)
	for {
		l.r.mu.Lock()
		running = len(l.r.punches)
		l.r.mu.Unlock()
		if running == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d punches still running after 8 s", running)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Three refused connects, ListenerHold apart: about 2 s, well before
	// the window.
	if el := time.Since(start); el > 4*time.Second {
		t.Errorf("the punches took %v: MaxAttempts did not end them", el)
	}
}

// TestInnerRouter: a router on a carrier's shared addresses is inside a
// NAT wherever it answers; one on private or link-local addresses only
// as the first asked (further on it may be a provider's own router);
// public ones and the lab's ISP segments (198.18.0.0/15) never.
func TestInnerRouter(t *testing.T) {
	for _, tc := range []struct {
		addr        string
		first, want bool
	}{
		{"100.64.7.1", true, true}, {"100.64.7.1", false, true}, {"::ffff:100.64.0.1", false, true},
		{"10.1.2.3", true, true}, {"10.1.2.3", false, false}, {"192.168.1.1", true, true},
		{"172.16.0.1", false, false}, {"169.254.0.1", true, true},
		{"203.0.113.9", true, false}, {"198.18.4.1", true, false}, {"8.8.8.8", true, false}, {"100.128.0.1", true, false},
	} {
		if got := innerRouter(netip.MustParseAddr(tc.addr), tc.first); got != tc.want {
			t.Errorf("innerRouter(%s, first=%v) = %v, want %v", tc.addr, tc.first, got, tc.want)
		}
	}
	if innerRouter(netip.Addr{}, true) {
		t.Error("innerRouter(no address) = true")
	}
}

// TestClimbInner: past a router inside a carrier's NAT the TTL grows by
// one; when nothing answers at the new TTL (the routers' ICMP rate limit,
// the deadline), the inner router's answer time stands, and the TTL stays
// raised.
func TestClimbInner(t *testing.T) {
	type answer struct {
		hop    time.Duration
		silent bool
		router string
	}
	for _, tc := range []struct {
		name    string
		answers map[int]answer
		hop     time.Duration
		silent  bool
		ttl     int
	}{
		{"home router, then nothing", map[int]answer{2: {8 * time.Millisecond, false, "192.168.1.1"}}, 8 * time.Millisecond, false, 3},
		{"carrier router, then the next answers", map[int]answer{2: {8 * time.Millisecond, false, "100.64.0.1"}, 3: {15 * time.Millisecond, false, "203.0.113.1"}}, 15 * time.Millisecond, false, 3},
		{"public router", map[int]answer{2: {8 * time.Millisecond, false, "203.0.113.1"}}, 8 * time.Millisecond, false, 2},
		{"reached the server", map[int]answer{2: {0, true, ""}}, 0, true, 2},
		{"carrier router, then the server", map[int]answer{2: {8 * time.Millisecond, false, "100.64.0.1"}, 3: {0, true, ""}}, 0, true, 3},
		{"carrier router, then nothing", map[int]answer{2: {8 * time.Millisecond, false, "100.64.0.1"}}, 8 * time.Millisecond, false, 3},
		{"nothing answers", map[int]answer{}, 0, false, 2},
	} {
		var provisional []int
		measure := func(ttl int) (time.Duration, bool, netip.Addr) {
			a := tc.answers[ttl]
			var ip netip.Addr
			if a.router != "" {
				ip = netip.MustParseAddr(a.router)
			}
			return a.hop, a.silent, ip
		}
		hop, silent, ttl := climbInner(context.Background(), 2, measure, func(_ time.Duration, ttl int) { provisional = append(provisional, ttl) })
		if hop != tc.hop || silent != tc.silent || ttl != tc.ttl {
			t.Errorf("%s: hop %v silent %v ttl %d, want %v %v %d", tc.name, hop, silent, ttl, tc.hop, tc.silent, tc.ttl)
		}
		if tc.ttl > 2 && (len(provisional) == 0 || provisional[len(provisional)-1] != tc.ttl) {
			t.Errorf("%s: provisional TTLs %v, want the last %d", tc.name, provisional, tc.ttl)
		}
	}
}
