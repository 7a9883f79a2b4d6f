package directtcp

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
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

type ifaddr string

func (a ifaddr) Network() string { return "ip+net" }
func (a ifaddr) String() string  { return string(a) }

// sessions collects what a listener hands out.
type sessions struct {
	mu  sync.Mutex
	got []*stream.Session
}

func (s *sessions) take(sess *stream.Session) bool {
	s.mu.Lock()
	s.got = append(s.got, sess)
	s.mu.Unlock()
	// Echo every stream the dialler opens.
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

func (s *sessions) all() []*stream.Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*stream.Session(nil), s.got...)
}

// startRung starts a rung on a UDP socket of addr, as a node does.
func startRung(t *testing.T, addr string, key *identity.Key, lim Limits, ifaces ...string) (*Rung, *sessions) {
	t.Helper()
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort(addr), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	got := &sessions{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	h := &rung.Host{Key: key, Socket: s, Logger: testLogger(t), Accepted: got.take,
		Context: ctx, Go: func(f func()) { wg.Go(f) },
		Session: stream.Config{HandshakeTimeout: 3 * time.Second},
		InterfaceAddrs: func() ([]net.Addr, error) {
			var out []net.Addr
			for _, a := range ifaces {
				out = append(out, ifaddr(a))
			}
			return out, nil
		}}
	r := New(h, lim)
	if err := r.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Close()
		for _, s := range got.all() {
			s.Abort()
		}
	})
	return r, got
}

func attempt(t *testing.T, key *identity.Key, peer identity.PeerID, cands ...candidate.Candidate) *rung.Attempt {
	return &rung.Attempt{Key: key, Peer: peer, Logger: testLogger(t),
		Session: stream.Config{HandshakeTimeout: 3 * time.Second},
		Remote:  candidate.PeerInfo{Candidates: cands}}
}

// TestListensOnUDPPort: the listener takes the UDP socket's port number,
// and advertises it as TCP host candidates: the bound address, or every
// usable interface address on all interfaces; a taken port falls back to
// another one.
func TestListensOnUDPPort(t *testing.T) {
	r, _ := startRung(t, "127.0.0.1:0", mustKey(t), Limits{})
	samePort(t, r)
	got := r.Candidates()
	if len(got) != 1 || got[0].Addr != r.Listener().Addr() || got[0].Kind != candidate.TCPHost {
		t.Errorf("bound socket: candidates %v, want %v (tcp-host)", got, r.Listener().Addr())
	}
	all, _ := startRung(t, "0.0.0.0:0", mustKey(t), Limits{}, "127.0.0.1/8", "10.1.2.3/24", "fe80::1/64")
	samePort(t, all)
	port := all.Listener().Addr().Port()
	got = all.Candidates()
	if len(got) != 1 || got[0] != (candidate.Candidate{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.1.2.3"), port), Kind: candidate.TCPHost}) {
		t.Errorf("all interfaces: %v, want 10.1.2.3:%d (tcp-host) only", got, port)
	}
	// Someone else has the TCP port already (without SO_REUSEPORT).
	s, err := sock.Listen(sock.Config{Addr: netip.MustParseAddrPort("127.0.0.1:0"), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	taken, err := net.Listen("tcp4", s.LocalAddr().String())
	if err != nil {
		t.Skip("the UDP socket's port is taken for TCP:", err)
	}
	defer taken.Close()
	h := &rung.Host{Key: mustKey(t), Socket: s, Logger: testLogger(t), Accepted: func(*stream.Session) bool { return false }}
	other := New(h, Limits{})
	if err := other.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if l := other.Listener(); l == nil || l.Addr().Port() == s.LocalAddr().Port() || l.Addr().Port() == 0 {
		t.Errorf("port taken: listener %v, want another port than %d", other.Listener(), s.LocalAddr().Port())
	}
}

// samePort checks that r listens on its UDP socket's port number, unless
// that TCP port is taken (another program's connection may hold it: TCP
// and UDP ephemeral ports are drawn from one range).
func samePort(t *testing.T, r *Rung) {
	t.Helper()
	udp, tcp := r.h.Socket.LocalAddr(), r.Listener().Addr()
	if tcp.Port() == udp.Port() {
		return
	}
	if ln, err := net.Listen("tcp", netip.AddrPortFrom(udp.Addr(), udp.Port()).String()); err == nil {
		ln.Close()
		t.Errorf("listening on TCP port %d, not the UDP socket's %d, which is free", tcp.Port(), udp.Port())
	} else {
		t.Logf("TCP port %d is taken (%v): the listener is on %d", udp.Port(), err, tcp.Port())
	}
}

// TestConnect: a dial reaches the peer's listener over TLS+yamux; the
// session proves the key, says tcp, and carries 1 MiB both ways intact;
// the listener hands its side over as a direct-tcp session. A wrong key
// is identity.ErrWrongPeer; a peer without TCP address ErrNoAddress and
// no plan.
func TestConnect(t *testing.T) {
	sk, ck := mustKey(t), mustKey(t)
	srv, got := startRung(t, "127.0.0.1:0", sk, Limits{})
	cli, _ := startRung(t, "127.0.0.1:0", ck, Limits{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a := attempt(t, ck, sk.ID(), srv.Candidates()...)
	if hs, ok := cli.Plan(a, 20*time.Millisecond); !ok || hs != 0 {
		t.Errorf("plan %v %v, want to run with no head start", hs, ok)
	}
	sess, err := cli.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Abort()
	if sess.RemotePeer() != sk.ID() || sess.Transport() != stream.TransportTCP || sess.RemoteAddr() != srv.Listener().Addr() {
		t.Errorf("session to %v over %s at %v", sess.RemotePeer(), sess.Transport(), sess.RemoteAddr())
	}
	st, err := sess.OpenStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	go func() {
		st.Write(msg)
		st.CloseWrite()
	}()
	back, err := io.ReadAll(st)
	if err != nil || !bytes.Equal(back, msg) {
		t.Errorf("echo: %d bytes back (%v), want the %d sent", len(back), err, len(msg))
	}
	waitFor(t, "the listener's session", func() bool { return len(got.all()) == 1 })
	if ss := got.all(); ss[0].Strategy() != Name || ss[0].RemotePeer() != ck.ID() {
		t.Errorf("listener's sessions %v", ss)
	}

	wrong := attempt(t, ck, mustKey(t).ID(), srv.Candidates()...)
	if _, err := cli.Connect(ctx, wrong); !errors.Is(err, identity.ErrWrongPeer) {
		t.Errorf("wrong key: %v, want identity.ErrWrongPeer", err)
	}
	udpOnly := attempt(t, ck, sk.ID(), candidate.Candidate{Addr: srv.Listener().Addr(), Kind: candidate.Host})
	if _, ok := cli.Plan(udpOnly, 20*time.Millisecond); ok {
		t.Error("a peer without TCP address: planned")
	}
	if _, err := cli.Connect(ctx, udpOnly); !errors.Is(err, ErrNoAddress) {
		t.Errorf("no TCP candidate: %v, want ErrNoAddress", err)
	}
}
