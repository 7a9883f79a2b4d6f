package rendezvous

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/reachp2p/reach/identity"
)

func localAddr(t testing.TB, c *Client) netip.AddrPort {
	return addrPortOf(c.cfg.Transport.Conn.LocalAddr())
}

func hasCand(cands []Candidate, c Candidate) bool { return slices.Contains(cands, c) }

func TestIntroduce(t *testing.T) {
	for _, tc := range []struct {
		name       string
		aTCP, bTCP bool
	}{
		{"udp", false, false},
		{"tcp", true, true},
		{"udp-to-tcp", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rs := startTestServer(t, ServerConfig{})
			servers := []ServerAddr{rs.ServerAddr()}
			ka, kb, kc := mustKey(t), mustKey(t), mustKey(t)
			var aOpts, bOpts []clientOpt
			if tc.aTCP {
				aOpts = append(aOpts, forceTCP)
			}
			if tc.bTCP {
				bOpts = append(bOpts, forceTCP)
			}
			bHost := Candidate{Addr: netip.MustParseAddrPort("10.0.0.2:4900"), Kind: Host}
			b := startClient(t, "b", kb, servers, newTransport(t), append(bOpts, func(c *ClientConfig) {
				c.Candidates = func() []Candidate { return []Candidate{bHost} }
			})...)
			a := startClient(t, "a", ka, servers, newTransport(t), aOpts...)
			if got, want := a.Current(), rs.ServerAddr(); got != want {
				t.Errorf("Current = %v, want %v", got, want)
			}
			if tc.aTCP {
				if a.Observed().IsValid() {
					t.Errorf("Observed over TCP = %v, want none", a.Observed())
				}
			} else if got, want := a.Observed(), localAddr(t, a); got != want {
				t.Errorf("Observed = %v, want %v", got, want)
			}

			offerSeen := make(chan PeerInfo, 1)
			go func() {
				in, ok := <-b.Incoming()
				if !ok {
					return
				}
				offerSeen <- in.Offer
				in.Accept(PeerInfo{})
			}()
			aHost := Candidate{Addr: netip.MustParseAddrPort("10.0.0.1:4900"), Kind: Host}
			key := bytes.Repeat([]byte{7}, 32)
			// a claims to be c: the server must overwrite it.
			ans, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{Peer: kc.ID(), Candidates: []Candidate{aHost}, PunchKey: key, Attempt: 42})
			if err != nil {
				t.Fatal(err)
			}
			offer := <-offerSeen
			// The TCP registrations' TLS was taken over from crypto/tls
			// (tlstake), and the introduction went through it.
			if st := rs.Stats(); int(st.TLSTaken) < b2i(tc.aTCP)+b2i(tc.bTCP) || st.TLSKept != 0 {
				t.Errorf("TLS taken over %d, kept %d; want %d taken, none kept", st.TLSTaken, st.TLSKept, b2i(tc.aTCP)+b2i(tc.bTCP))
			}
			if offer.Peer != ka.ID() {
				t.Errorf("offer.Peer = %s, want the dialler's authenticated ID %s", offer.Peer.Short(), ka.ID().Short())
			}
			if !hasCand(offer.Candidates, aHost) || offer.Attempt != 42 || !bytes.Equal(offer.PunchKey, key) {
				t.Errorf("offer = %+v", offer)
			}
			aRefl := Candidate{Addr: localAddr(t, a), Kind: Reflexive}
			if hasCand(offer.Candidates, aRefl) == tc.aTCP {
				t.Errorf("offer candidates %v: reflexive %v present=%v, want %v", offer.Candidates, aRefl, !tc.aTCP, !tc.aTCP)
			}
			if ans.Peer != kb.ID() {
				t.Errorf("answer.Peer = %s, want %s", ans.Peer.Short(), kb.ID().Short())
			}
			if !hasCand(ans.Candidates, bHost) || ans.Attempt != 42 || !bytes.Equal(ans.PunchKey, key) {
				t.Errorf("answer = %+v", ans)
			}
			bRefl := Candidate{Addr: localAddr(t, b), Kind: Reflexive}
			if hasCand(ans.Candidates, bRefl) == tc.bTCP {
				t.Errorf("answer candidates %v: reflexive %v present=%v, want %v", ans.Candidates, bRefl, !tc.bTCP, !tc.bTCP)
			}
		})
	}
}

func TestConnectErrors(t *testing.T) {
	rs := startTestServer(t, ServerConfig{IntroTimeout: 300 * time.Millisecond})
	servers := []ServerAddr{rs.ServerAddr()}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))

	t.Run("unknown", func(t *testing.T) {
		_, err := a.Connect(testCtx(t, 5*time.Second), mustKey(t).ID(), PeerInfo{})
		var ce *ConnectError
		if !errors.Is(err, ErrUnknownPeer) || !errors.As(err, &ce) {
			t.Fatalf("err = %v, want ErrUnknownPeer", err)
		}
	})
	t.Run("offline", func(t *testing.T) {
		kb := mustKey(t)
		b := startClient(t, "b", kb, servers, newTransport(t))
		b.Close()
		waitFor(t, "b to unregister", func() bool { return rs.Stats().Peers == 1 })
		_, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{})
		if !errors.Is(err, ErrPeerOffline) {
			t.Fatalf("err = %v, want ErrPeerOffline", err)
		}
	})
	t.Run("timeout", func(t *testing.T) {
		kb := mustKey(t)
		startClient(t, "b", kb, servers, newTransport(t)) // never reads Incoming
		start := time.Now()
		_, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{})
		if !errors.Is(err, ErrTimeout) {
			t.Fatalf("err = %v, want ErrTimeout", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("timeout took %v", d)
		}
	})
	t.Run("rejected", func(t *testing.T) {
		kb := mustKey(t)
		b := startClient(t, "b", kb, servers, newTransport(t))
		go func() {
			for in := range b.Incoming() {
				in.Reject("not today")
				if err := in.Accept(PeerInfo{}); !errors.Is(err, ErrAnswered) {
					t.Errorf("second answer: %v, want ErrAnswered", err)
				}
			}
		}()
		_, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{})
		var ce *ConnectError
		if !errors.Is(err, ErrRejected) || !errors.As(err, &ce) || ce.Reason != "not today" {
			t.Fatalf("err = %v, want ErrRejected with reason", err)
		}
	})
	t.Run("bad-offer", func(t *testing.T) {
		kb := mustKey(t)
		startClient(t, "b", kb, servers, newTransport(t))
		many := make([]Candidate, 100)
		for i := range many {
			many[i] = Candidate{Addr: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(i+1)), Kind: Host}
		}
		_, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{Candidates: many})
		if !errors.Is(err, ErrBadRequest) {
			t.Fatalf("err = %v, want ErrBadRequest", err)
		}
	})
}

func TestWrongServerKey(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	sa := rs.ServerAddr()
	sa.ID = mustKey(t).ID()
	for _, tcp := range []bool{false, true} {
		var opts []clientOpt
		if tcp {
			opts = append(opts, forceTCP)
		}
		c := newTestClient(t, "a", mustKey(t), []ServerAddr{sa}, newTransport(t), opts...)
		err := c.Start(testCtx(t, 5*time.Second))
		if !errors.Is(err, ErrNoServer) || !errors.Is(err, identity.ErrWrongPeer) {
			t.Fatalf("tcp=%v: err = %v, want ErrNoServer and identity.ErrWrongPeer", tcp, err)
		}
	}
}

// deadAddr returns a server address where nothing listens.
func deadAddr(t testing.TB) ServerAddr {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := addrPortOf(l.Addr()).Port()
	l.Close()
	return ServerAddr{ID: mustKey(t).ID(), Host: "127.0.0.1", Port: port}
}

func TestDeadServer(t *testing.T) {
	dead := deadAddr(t)
	for _, tcp := range []bool{false, true} {
		var opts []clientOpt
		if tcp {
			opts = append(opts, forceTCP)
		}
		c := newTestClient(t, "a", mustKey(t), []ServerAddr{dead}, newTransport(t), opts...)
		start := time.Now()
		err := c.Start(testCtx(t, 10*time.Second))
		var nse *NoServerError
		if !errors.Is(err, ErrNoServer) || !errors.As(err, &nse) || len(nse.Errs) != 1 {
			t.Fatalf("tcp=%v: err = %v, want ErrNoServer", tcp, err)
		}
		// QUIC cannot see "port unreachable"; the refused TCP fallback
		// cuts the wait short.
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("tcp=%v: ErrNoServer after %v", tcp, d)
		}
		t.Logf("tcp=%v: %v after %v", tcp, err, time.Since(start))
	}
}

func TestFailover(t *testing.T) {
	s1 := startTestServer(t, ServerConfig{Logger: testLogger(t, "s1")})
	s2 := startTestServer(t, ServerConfig{Logger: testLogger(t, "s2")})
	dead := deadAddr(t)
	servers := []ServerAddr{dead, s1.ServerAddr(), s2.ServerAddr()}
	ka, kb := mustKey(t), mustKey(t)
	b := startClient(t, "b", kb, servers, newTransport(t))
	answerAll(t, b)
	a := startClient(t, "a", ka, servers, newTransport(t))
	if a.Current() != s1.ServerAddr() || b.Current() != s1.ServerAddr() {
		t.Fatalf("want both on s1 (the first live server), got %v and %v", a.Current(), b.Current())
	}
	if _, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}); err != nil {
		t.Fatal(err)
	}
	s1.Close()
	waitFor(t, "failover to s2", func() bool {
		return a.Current() == s2.ServerAddr() && b.Current() == s2.ServerAddr()
	})
	if _, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{}); err != nil {
		t.Fatalf("after failover: %v", err)
	}
}

func TestReRegistrationReplaces(t *testing.T) {
	rs := startTestServer(t, ServerConfig{})
	servers := []ServerAddr{rs.ServerAddr()}
	kb := mustKey(t)
	b1 := startClient(t, "b1", kb, servers, newTransport(t))
	b2 := startClient(t, "b2", kb, servers, newTransport(t))
	answerAll(t, b2)
	waitFor(t, "b1 to be replaced", func() bool { return b1.Current().IsZero() })
	if _, err := b1.Connect(testCtx(t, time.Second), kb.ID(), PeerInfo{}); !errors.Is(err, ErrReplaced) {
		t.Errorf("old client Connect: %v, want ErrReplaced", err)
	}
	a := startClient(t, "a", mustKey(t), servers, newTransport(t))
	ans, err := a.Connect(testCtx(t, 5*time.Second), kb.ID(), PeerInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (Candidate{Addr: localAddr(t, b2), Kind: Reflexive}); !hasCand(ans.Candidates, want) {
		t.Errorf("answer %v came not from the newest registration %v", ans.Candidates, want)
	}
	if st := rs.Stats(); st.Replaced != 1 || st.Peers != 2 {
		t.Errorf("stats %+v", st)
	}
}

func TestTCPUpgradesToQUIC(t *testing.T) {
	t.Run("tcp-first", func(t *testing.T) {
		// QUIC's packets are held until TCP has registered: the client
		// starts on TCP, then moves to QUIC, which replaces TCP at the
		// server.
		rs := startTestServer(t, ServerConfig{})
		gate := newGatedConn(t)
		tr := &quic.Transport{Conn: gate}
		t.Cleanup(func() { tr.Close(); gate.Close() })
		c := startClient(t, "a", mustKey(t), []ServerAddr{rs.ServerAddr()}, tr, func(c *ClientConfig) {
			c.UDPHeadStart = time.Nanosecond
		})
		if c.Current().IsZero() || c.Observed().IsValid() {
			t.Fatalf("want a TCP registration first: current %v, observed %v", c.Current(), c.Observed())
		}
		gate.open()
		waitFor(t, "QUIC registration", func() bool { return c.Observed().IsValid() })
		if st := rs.Stats(); st.Peers != 1 || st.Registrations != 2 || st.Replaced != 1 {
			t.Errorf("stats %+v, want TCP then QUIC replacing it", st)
		}
	})
	t.Run("race", func(t *testing.T) {
		// Both attempts run at once and either may finish first. Once the
		// TCP attempt is over, the client must still be on QUIC and the
		// server must introduce others to it there.
		rs := startTestServer(t, ServerConfig{})
		var tcpOpen atomic.Int32 // TCP attempts dialling or connected
		ka := mustKey(t)
		a := startClient(t, "a", ka, []ServerAddr{rs.ServerAddr()}, newTransport(t), func(c *ClientConfig) {
			c.UDPHeadStart = time.Nanosecond
			c.DialTCP = func(ctx context.Context, network, addr string) (net.Conn, error) {
				tcpOpen.Add(1)
				var d net.Dialer
				conn, err := d.DialContext(ctx, network, addr)
				if err != nil {
					tcpOpen.Add(-1)
					return nil, err
				}
				return &closeNotifyConn{Conn: conn, done: func() { tcpOpen.Add(-1) }}, nil
			}
		})
		answerAll(t, a)
		waitFor(t, "QUIC registration", func() bool { return a.Observed().IsValid() })
		// A TCP attempt not yet dialling now finds its context cancelled.
		waitFor(t, "the TCP attempt to end", func() bool { return tcpOpen.Load() == 0 })
		if st := rs.Stats(); st.Peers != 1 || st.Registrations != st.Replaced+1 {
			t.Errorf("stats %+v", st)
		}
		b := startClient(t, "b", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t), forceTCP)
		ans, err := b.Connect(testCtx(t, 5*time.Second), ka.ID(), PeerInfo{})
		if err != nil {
			t.Fatalf("introduction to a: %v", err)
		}
		if obs := a.Observed(); !obs.IsValid() || !hasCand(ans.Candidates, Candidate{Addr: obs, Kind: Reflexive}) {
			t.Errorf("answer candidates %v: want a's QUIC address %v", ans.Candidates, obs)
		}
	})
}

// gatedConn is a UDP socket that sends nothing until open is called.
type gatedConn struct {
	net.PacketConn
	gate chan struct{}
	once sync.Once
}

func newGatedConn(t testing.TB) *gatedConn {
	uc, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	return &gatedConn{PacketConn: uc, gate: make(chan struct{})}
}

func (g *gatedConn) open() { g.once.Do(func() { close(g.gate) }) }

func (g *gatedConn) WriteTo(p []byte, addr net.Addr) (int, error) {
	<-g.gate
	return g.PacketConn.WriteTo(p, addr)
}

func (g *gatedConn) Close() error {
	g.open()
	return g.PacketConn.Close()
}

// closeNotifyConn calls done once when it is closed.
type closeNotifyConn struct {
	net.Conn
	done func()
	once sync.Once
}

func (c *closeNotifyConn) Close() error {
	c.once.Do(c.done)
	return c.Conn.Close()
}

func TestClientKeepsRegistrationAlive(t *testing.T) {
	rs := startTestServer(t, ServerConfig{IdleTimeout: 300 * time.Millisecond})
	for _, tcp := range []bool{false, true} {
		var opts []clientOpt
		if tcp {
			opts = append(opts, forceTCP)
		}
		c := startClient(t, "a", mustKey(t), []ServerAddr{rs.ServerAddr()}, newTransport(t), opts...)
		time.Sleep(800 * time.Millisecond)
		if c.Current().IsZero() || rs.Stats().Registrations != uint64(1+btoi(tcp)) {
			t.Errorf("tcp=%v: registration did not survive idle periods: %+v", tcp, rs.Stats())
		}
		c.Close()
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestClientConfigErrors(t *testing.T) {
	if _, err := NewClient(ClientConfig{Key: mustKey(t)}); !errors.Is(err, ErrNoServer) {
		t.Errorf("no servers: %v", err)
	}
	if _, err := NewClient(ClientConfig{Servers: []ServerAddr{deadAddr(t)}}); err == nil {
		t.Error("no key: want error")
	}
	c, err := NewClient(ClientConfig{Key: mustKey(t), Servers: []ServerAddr{deadAddr(t)}})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := c.Start(testCtx(t, time.Second)); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: %v", err)
	}
	if _, err := c.Connect(testCtx(t, time.Second), mustKey(t).ID(), PeerInfo{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Connect after Close: %v", err)
	}
}
