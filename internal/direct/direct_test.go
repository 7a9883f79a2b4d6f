package direct

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/reachp2p/reach/identity"
	"github.com/reachp2p/reach/internal/candidate"
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

func mustKey(t *testing.T) *identity.Key {
	t.Helper()
	k, err := identity.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func listen(t *testing.T, addr string) *sock.Socket {
	t.Helper()
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort(addr), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

type ifaddr string

func (a ifaddr) Network() string { return "ip+net" }
func (a ifaddr) String() string  { return string(a) }

func host(t *testing.T, s *sock.Socket, addrs ...string) *rung.Host {
	return &rung.Host{Socket: s, Logger: testLogger(t), InterfaceAddrs: func() ([]net.Addr, error) {
		var out []net.Addr
		for _, a := range addrs {
			out = append(out, ifaddr(a))
		}
		return out, nil
	}}
}

// TestCandidates: a socket bound to one address advertises that address;
// one on all interfaces advertises every usable interface address.
func TestCandidates(t *testing.T) {
	bound := listen(t, "127.0.0.1:0")
	got := New(host(t, bound, "10.1.2.3/24")).Candidates()
	if len(got) != 1 || got[0].Addr != bound.LocalAddr() || got[0].Kind != candidate.Host {
		t.Errorf("bound socket: %v, want %v", got, bound.LocalAddr())
	}
	all := listen(t, "0.0.0.0:0")
	port := all.LocalAddr().Port()
	got = New(host(t, all, "127.0.0.1/8", "10.1.2.3/24", "fe80::1/64")).Candidates()
	if len(got) != 1 || got[0].Addr != netip.AddrPortFrom(netip.MustParseAddr("10.1.2.3"), port) {
		t.Errorf("all interfaces: %v, want 10.1.2.3:%d only (no loopback, no link-local)", got, port)
	}
}

// TestPlan: direct keeps its head start only when the peer may be
// reachable as it is.
func TestPlan(t *testing.T) {
	r := New(host(t, listen(t, "127.0.0.1:0"), "192.168.7.2/24"))
	srflx := candidate.Candidate{Addr: netip.MustParseAddrPort("198.51.100.7:4000"), Kind: candidate.Reflexive}
	lanHost := candidate.Candidate{Addr: netip.MustParseAddrPort("192.168.7.9:4000"), Kind: candidate.Host}
	lan := &rung.Attempt{Remote: candidate.PeerInfo{Candidates: []candidate.Candidate{lanHost, srflx}}}
	other := &rung.Attempt{Remote: candidate.PeerInfo{Candidates: []candidate.Candidate{{Addr: netip.MustParseAddrPort("10.9.9.9:4000"), Kind: candidate.Host}, srflx}}}
	if hs, ok := r.Plan(lan, 20*time.Millisecond); !ok || hs != PlausibleHeadStart {
		t.Errorf("same LAN: %v %v", hs, ok)
	}
	if hs, ok := r.Plan(other, 20*time.Millisecond); !ok || hs != 0 {
		t.Errorf("another private network: %v %v, want no head start", hs, ok)
	}
	// UDP blocked: the peer registered over TCP (no reflexive address),
	// or this node did (no observed address).
	noUDP := &rung.Attempt{Remote: candidate.PeerInfo{Candidates: []candidate.Candidate{lanHost}}}
	if hs, ok := r.Plan(noUDP, 20*time.Millisecond); !ok || hs != 0 {
		t.Errorf("peer without UDP: %v %v, want no head start", hs, ok)
	}
	r.h.Observed = func() netip.AddrPort { return netip.AddrPort{} }
	if hs, ok := r.Plan(lan, 20*time.Millisecond); !ok || hs != 0 {
		t.Errorf("this node without UDP: %v %v, want no head start", hs, ok)
	}
	r.h.Observed = func() netip.AddrPort { return srflx.Addr }
	if hs, ok := r.Plan(lan, 20*time.Millisecond); !ok || hs != PlausibleHeadStart {
		t.Errorf("both with UDP, same LAN: %v %v", hs, ok)
	}
}

// TestConnect dials a peer's host candidates: a dead one and a live one;
// the live one wins and proves the peer's key; a wrong key is refused
// with identity.ErrWrongPeer; no host candidate is ErrNoAddress.
func TestConnect(t *testing.T) {
	srv := listen(t, "127.0.0.1:0")
	sk, ck := mustKey(t), mustKey(t)
	ln, err := stream.Listen(srv.Transport(), sk, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		for {
			s, err := ln.Accept(ctx)
			if err != nil {
				return
			}
			go func() {
				st, err := s.AcceptStream(ctx)
				if err == nil {
					buf := make([]byte, 5)
					n, _ := st.Read(buf)
					st.Write(buf[:n])
					st.CloseWrite()
				}
			}()
		}
	}()
	cli := listen(t, "127.0.0.1:0")
	dead := listen(t, "127.0.0.1:0").LocalAddr() // a socket with no QUIC listener
	a := &rung.Attempt{Key: ck, Peer: sk.ID(), Socket: cli, Logger: testLogger(t),
		Session: stream.Config{HandshakeTimeout: 2 * time.Second},
		Remote: candidate.PeerInfo{Candidates: []candidate.Candidate{
			{Addr: dead, Kind: candidate.Host},
			{Addr: srv.LocalAddr(), Kind: candidate.Host},
			{Addr: netip.MustParseAddrPort("127.0.0.1:9"), Kind: candidate.Reflexive}, // holepunch's, not direct's
		}}}
	r := New(host(t, cli))
	sess, err := r.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	if sess.RemotePeer() != sk.ID() || sess.RemoteAddr() != srv.LocalAddr() {
		t.Errorf("session to %v at %v", sess.RemotePeer(), sess.RemoteAddr())
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Write([]byte("hello"))
	got := make([]byte, 5)
	if _, err := io.ReadFull(st, got); err != nil || string(got) != "hello" {
		t.Errorf("echo %q %v", got, err)
	}
	// Abort: the listener above stops accepting after one stream, so it
	// would never answer Close's request to finish reading.
	sess.Abort()

	wrong := *a
	wrong.Peer = mustKey(t).ID()
	wrong.Remote = candidate.PeerInfo{Candidates: []candidate.Candidate{{Addr: srv.LocalAddr(), Kind: candidate.Host}}}
	if _, err := r.Connect(ctx, &wrong); !errors.Is(err, identity.ErrWrongPeer) {
		t.Errorf("wrong key: %v, want identity.ErrWrongPeer", err)
	}
	none := *a
	none.Remote = candidate.PeerInfo{Candidates: []candidate.Candidate{{Addr: srv.LocalAddr(), Kind: candidate.Mapped}}}
	if _, err := r.Connect(ctx, &none); !errors.Is(err, ErrNoAddress) {
		t.Errorf("no host candidate: %v, want ErrNoAddress", err)
	}
}

// TestPrefersIPv6: a peer reachable over both IPv4 and IPv6 is dialled
// over IPv6 (Happy Eyeballs: IPv4 waits IPv4Delay), every time; with
// only IPv4 targets, IPv4 goes at once.
func TestPrefersIPv6(t *testing.T) {
	srv := listen(t, "[::]:0")
	probe, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback here:", err)
	}
	probe.Close()
	sk, ck := mustKey(t), mustKey(t)
	ln, err := stream.Listen(srv.Transport(), sk, stream.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	go func() {
		for {
			if _, err := ln.Accept(ctx); err != nil {
				return
			}
		}
	}()
	port := srv.LocalAddr().Port()
	v4 := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port)
	v6 := netip.AddrPortFrom(netip.IPv6Loopback(), port)
	for i := range 5 {
		cli := listen(t, "[::]:0")
		a := &rung.Attempt{Key: ck, Peer: sk.ID(), Socket: cli, Logger: testLogger(t), Session: stream.Config{HandshakeTimeout: 2 * time.Second}}
		targets := []netip.AddrPort{v4, v6}
		if i%2 == 1 {
			targets = []netip.AddrPort{v6, v4}
		}
		sess, err := DialFirst(ctx, a, targets)
		if err != nil {
			t.Fatal(err)
		}
		if got := sess.RemoteAddr(); got != v6 {
			t.Errorf("dial %d: path %v, want the IPv6 %v", i, got, v6)
		}
		sess.Abort()
	}
	cli := listen(t, "[::]:0")
	a := &rung.Attempt{Key: ck, Peer: sk.ID(), Socket: cli, Logger: testLogger(t), Session: stream.Config{HandshakeTimeout: 2 * time.Second}}
	start := time.Now()
	sess, err := DialFirst(ctx, a, []netip.AddrPort{v4})
	if err != nil {
		t.Fatal(err)
	}
	sess.Abort()
	if el := time.Since(start); el >= time.Second {
		t.Errorf("IPv4 alone took %v", el)
	}
}

// TestReachableTargets: a node without an IPv6 address of the right scope
// does not dial the peer's IPv6 addresses (each would cost Happy
// Eyeballs' IPv4Delay and a handshake timeout, measured 0.6 round trips
// at 20 ms per link in BenchmarkLabConnect's reach-direct).
func TestReachableTargets(t *testing.T) {
	v4 := netip.MustParseAddrPort("203.0.113.5:4000")
	g6 := netip.MustParseAddrPort("[2001:db8::5]:4000")
	ula := netip.MustParseAddrPort("[fd00::5]:4000")
	all := []netip.AddrPort{v4, g6, ula}
	for _, tc := range []struct {
		name  string
		sock  string
		addrs []string
		want  []netip.AddrPort
	}{
		{"ipv4 socket", "0.0.0.0:0", []string{"10.0.0.2/24", "2001:db8:1::2/64"}, []netip.AddrPort{v4}},
		{"no ipv6 address", "[::]:0", []string{"10.0.0.2/24", "fe80::1/64"}, []netip.AddrPort{v4}},
		{"unique-local only", "[::]:0", []string{"10.0.0.2/24", "fd00:1::2/64"}, []netip.AddrPort{v4, ula}},
		{"global ipv6", "[::]:0", []string{"10.0.0.2/24", "2001:db8:1::2/64"}, all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := listen(t, tc.sock)
			r := &Rung{h: host(t, s, tc.addrs...)}
			got := r.reachable(append([]netip.AddrPort(nil), all...))
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("targets %v, want %v", got, tc.want)
			}
		})
	}
}
